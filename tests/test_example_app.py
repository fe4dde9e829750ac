"""The example app, run exactly as its README says, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from .helpers import ROOT, leftover_names


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist-2"])
def test_example_app_passes_from_repo_root(
    node_base: str, redis_base: str, buildkit_cli: str, docker_client: Any, xdist: list[str]
) -> None:
    before = set(leftover_names(docker_client))
    cmd = [
        sys.executable, "-m", "pytest", "example-app", "-p", "no:cacheprovider", *xdist,
        "--dockapp-build-arg", f"BASE_IMAGE={node_base}", f"--dockapp-docker-cli={buildkit_cli}",
    ]  # fmt: skip
    env = {**os.environ, "REDIS_IMAGE": redis_base}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout and "failed" not in out.stdout
    if xdist:
        # one build for both workers (or one reuse of the serial run's unchanged build)
        built = out.stdout.count("built pytest-dockapp/example-app")
        unchanged = out.stdout.count("nothing it is built from changed since its last build")
        assert built + unchanged == 1, out.stdout
        # one stack for both workers (dockapp_compose_scope = session)
        assert out.stdout.count("shared, started by another pytest-xdist worker") == 1, out.stdout
    else:
        assert "builder buildkit" in out.stdout
    assert set(leftover_names(docker_client)) - before == set()
