"""The example app, run exactly as its README says, from the repository root."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest

from .helpers import ROOT, leftover_names

README = ROOT / "example-app" / "README.md"
NODE_BASE_IN_README, REDIS_IN_README = "dockapp-test/node:bookworm", "dockapp-test/redis:bookworm"


def _span(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist-2"])
def test_example_app_passes_from_repo_root(
    node_base: str, redis_base: str, buildkit_cli: str, docker_client: Any, xdist: list[str]
) -> None:
    before = set(leftover_names(docker_client))
    # The README's offline command as written (the bases the suite made, where they are others).
    line = next(x for x in README.read_text().splitlines() if x.startswith("REDIS_IMAGE="))
    words = shlex.split(line.replace(NODE_BASE_IN_README, node_base).replace(REDIS_IN_README, redis_base))
    env = {**os.environ, **dict(w.split("=", 1) for w in words[: words.index("pytest")])}
    cmd = [sys.executable, "-m", *words[words.index("pytest") :], "-p", "no:cacheprovider", *xdist]
    cmd.append(f"--dockapp-docker-cli={buildkit_cli}")
    cmd.append("--dockapp-cov")  # the app's own server.js, measured inside its container
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout and "failed" not in out.stdout
    # told once (by the controller under xdist); the routes the tests hit, not the error paths
    covered = re.findall(r"^app coverage: server\.js (\d+) % \(missed (.*)\)$", out.stdout, re.M)
    assert len(covered) == 1, out.stdout
    source = (ROOT / "example-app" / "server.js").read_text().splitlines()
    missed = {n for part in covered[0][1].split(", ") for n in _span(part)}
    health = next(n for n, text in enumerate(source, 1) if 'status: "ok"' in text)
    no_redis = next(n for n, text in enumerate(source, 1) if "no REDIS_HOST" in text)
    assert health not in missed and no_redis in missed, covered
    if xdist:
        # one build for both workers (or one reuse of the serial run's unchanged build)
        built = out.stdout.count("built pytest-dockapp/example-app")
        unchanged = out.stdout.count("nothing it is built from changed since its last build")
        assert built + unchanged == 1, out.stdout
        # one stack for both workers (dockapp_compose_scope = session), told once
        assert out.stdout.count("shared by every pytest-xdist worker") == 1, out.stdout
        assert "shared, started by another pytest-xdist worker" not in out.stdout
    else:
        assert "builder buildkit" in out.stdout
    assert set(leftover_names(docker_client)) - before == set()
