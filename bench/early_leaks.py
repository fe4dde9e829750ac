"""Leftovers of a session that ends while the early start still works (trust III, item 1).

    python bench/early_leaks.py --runs 20

The hostile tester's case: a plain test fails first under ``-x``, and a test collected after it
asks for ``dockapp``, whose app takes 10 s to listen. The session ends within a second, while the
early start is building, leasing, creating or waiting. Each run is a whole ``python -m pytest``
process, with ``-x``, with ``-n 2 -x``, and without ``-x`` but sent SIGTERM 0-200 ms after
collection; once it has exited, any container that carries this script's label is a leak (its
owner is gone). Leftovers are counted, then removed by that label.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

DOCKERFILE = """FROM dockapp-test/busybox:1
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["sh", "-c", "sleep 10; exec httpd -f -p 80 -h /www"]
"""

TESTS = """
def test_a_fails_first():
    assert False

def test_b(dockapp):
    pass
"""


def leftovers(label: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="dockapp-early-leaks-"))
    (project / "Dockerfile").write_text(DOCKERFILE)
    (project / "test_early.py").write_text(TESTS)
    label = f"org.pytest-dockapp.bench.early-leaks={uuid.uuid4().hex[:12]}"
    env = {**os.environ, "DOCKAPP_LABELS": label}
    print("| form | runs | runs with leftovers | containers left |")
    print("|---|---|---|---|")
    for form in (["-x"], ["-n", "2", "-x"], ["SIGTERM"]):
        leaky = left = 0
        for _ in range(args.runs):
            if form == ["SIGTERM"]:
                sigterm_after_collection(project, env)
            else:
                subprocess.run(
                    [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *form],
                    cwd=project,
                    env=env,
                    capture_output=True,
                )
            found = leftovers(label)
            if found:
                leaky, left = leaky + 1, left + len(found)
                subprocess.run(["docker", "rm", "-f", *found], capture_output=True)
        shown = "SIGTERM 0-200 ms after collection" if form == ["SIGTERM"] else " ".join(form)
        print(f"| `{shown}` | {args.runs} | {leaky} | {left} |")


def sigterm_after_collection(project: Path, env: dict[str, str]) -> None:
    """A session that CI cancels right after collection, while the early start works."""
    import random
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("collected"):
            break
    time.sleep(random.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)


if __name__ == "__main__":
    main()
