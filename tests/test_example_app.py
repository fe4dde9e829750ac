"""The example app, run exactly as its README says, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from .conftest import ROOT, leftover_names


def test_example_app_passes_from_repo_root(node_base: str, buildkit_cli: str, docker_client: Any) -> None:
    before = set(leftover_names(docker_client))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "example-app",
        "-p",
        "no:cacheprovider",
        "--dockapp-build-arg",
        f"BASE_IMAGE={node_base}",
        "--dockapp-docker-cli",
        buildkit_cli,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout and "failed" not in out.stdout
    assert "builder buildkit" in out.stdout
    assert set(leftover_names(docker_client)) - before == set()
