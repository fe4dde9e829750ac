"""Cost of the build-reuse check (the fingerprint of everything a build reads), by context size.

    python bench/reuse_check.py --sizes 1000,10000 --runs 9

Point PYTHONPATH at another checkout to measure its version of the check in the same run.
The context is N small files under bulk/ that a ``COPY . /app`` reads; the base is the local
busybox image (``.ci/make-bases busybox``). Prints the median and range in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import docker

try:
    from pytest_dockapp.builds.reuse import fingerprint
except ImportError:  # versions before the module was renamed
    from pytest_dockapp.buildcache import fingerprint  # type: ignore[no-redef]
from pytest_dockapp.builds.dockerfile import Dockerfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--runs", type=int, default=9)
    opts = ap.parse_args()
    client = docker.from_env()
    for size in (int(s) for s in opts.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="dockapp-bench-reuse-") as tmp:
            ctx = Path(tmp)
            (ctx / "Dockerfile").write_text("FROM dockapp-test/busybox:1\nCOPY . /app\n")
            for i in range(size):
                d = ctx / "bulk" / f"d{i // 1000}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i}.txt").write_text(f"{i}\n")
            times = []
            for _ in range(opts.runs + 1):  # the first run warms the page cache
                start = time.perf_counter()
                df = Dockerfile.read(ctx / "Dockerfile")
                fingerprint(client, ctx, ctx / "Dockerfile", df, build_args={}, target=None, builder="classic")
                times.append((time.perf_counter() - start) * 1000)
            ms = times[1:]
            print(f"{size} files: {statistics.median(ms):.1f} ms ({min(ms):.1f}-{max(ms):.1f})")


if __name__ == "__main__":
    main()
