"""What our walk sends is what the docker CLI sends, for the same .dockerignore (real engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.builds.context import context_files

FILES = [
    "Dockerfile",
    "app.go",
    "README.md",
    "README-secret.md",
    "CHANGES.md",
    "docs/guide.md",
    "docs/README.md",
    "node_modules/pkg/index.js",
    "keep/.env",
    ".env",
    "src/temp1.txt",
    "src/deep/temp2.txt",
    "Temp.txt",
    "logs/a.log",
    "logs/keep.log",
    "build/out/app.bin",
]
IGNORE = """
# comments and blank lines are skipped

*.md
!README*.md
README-secret.md
node_modules
**/.env
*/temp*
logs
!logs/keep.log
/build/
"""


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_walk_sends_what_the_cli_sends(
    tmp_path: Path, docker_client: Any, busybox: str, builder: str, request: pytest.FixtureRequest
) -> None:
    # classic: the CLI walks the context itself; BuildKit: its client-side file sync does
    cli = request.getfixturevalue("buildkit_cli") if builder == "buildkit" else shutil.which("docker")
    if cli is None:
        pytest.fail("no docker CLI on PATH to compare with", pytrace=False)
    ctx = tmp_path / "ctx"
    for rel in FILES:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(rel)
    (ctx / "Dockerfile").write_text(f"FROM {busybox}\nCOPY . /ctx\n")
    (ctx / ".dockerignore").write_text(IGNORE)
    tag = f"dockapp-test/parity:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"}
    subprocess.run([cli, "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True, env=env)
    try:
        out = docker_client.containers.run(tag, ["find", "/ctx", "-type", "f"], remove=True).decode()
    finally:
        docker_client.images.remove(tag, force=True)
    sent_by_cli = sorted(line.removeprefix("/ctx/") for line in out.split())
    assert context_files(ctx, ctx / "Dockerfile") == sent_by_cli
    assert "logs/keep.log" in sent_by_cli and "README.md" in sent_by_cli and "Temp.txt" in sent_by_cli
