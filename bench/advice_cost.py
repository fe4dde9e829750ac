"""What verifying the cache marker's advice adds to a failing check (cache marker II, item 9).

    python bench/advice_cost.py --runs 3

For three failing shapes of the test corpus, the same ``check_cache`` with and without
``verify_advice``, interleaved, on both builders; medians (min-max). The difference is the two
builds of the proposed Dockerfile, which reuse the layer cache.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from pytest_dockapp.builds.image import BuildSpec
from pytest_dockapp.cache.check import check_cache
from pytest_dockapp.engine.client import resolve_builder
from tests.corpus import CASES

SHAPES = ("manifest-in-subfolder", "workdir-switch", "pnpm-workspace")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env()
    print("| case | builder | check without verifying | with verifying | added |")
    print("|---|---|---|---|---|")
    for builder_name in ("classic", "buildkit"):
        builder = resolve_builder(builder_name, None)
        for case in [c for c in CASES if c.name in SHAPES]:
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.runs):
                for verify in (False, True):
                    tmp = Path(tempfile.mkdtemp(prefix="dockapp-advice-bench-"))
                    (tmp / "Dockerfile").write_text(case.dockerfile)
                    for rel, text in case.files.items():
                        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                        (tmp / rel).write_text(text)
                    began = time.perf_counter()
                    report = check_cache(
                        client,
                        BuildSpec(tmp),
                        builder=builder,
                        change=case.change,
                        cached=case.cached,
                        verify_advice=verify,
                    )
                    times[verify].append(time.perf_counter() - began)
                    assert not report.ok and (not verify or (report.advice and report.advice.verified))
                    shutil.rmtree(tmp, ignore_errors=True)

            def show(xs: list[float]) -> str:
                return f"{statistics.median(xs):.2f}s ({min(xs):.2f}-{max(xs):.2f})"

            added = statistics.median(times[True]) - statistics.median(times[False])
            print(f"| {case.name} | {builder_name} | {show(times[False])} | {show(times[True])} | +{added:.2f}s |")


if __name__ == "__main__":
    main()
