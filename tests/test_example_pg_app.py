"""The PostgreSQL example app, run exactly as its README says, from the repository root."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any

from pytest_dockapp.engine import cleanup

from .helpers import ROOT, leftover_names

README = ROOT / "example-pg-app" / "README.md"
BASES_IN_README = {"dockapp-test/python:bookworm": "python", "dockapp-test/postgres:bookworm": "postgres"}


def test_example_pg_app_gives_each_test_the_seeded_database_from_repo_root(
    python_base: str, postgres_base: str, docker_client: Any
) -> None:
    # The README's offline command as written (the bases the suite made, where they are others).
    line = next(x for x in README.read_text().splitlines() if x.startswith("POSTGRES_IMAGE="))
    bases = {"python": python_base, "postgres": postgres_base}
    for written, kind in BASES_IN_README.items():
        line = line.replace(written, bases[kind])
    words = shlex.split(line)
    env = {**os.environ, **dict(w.split("=", 1) for w in words[: words.index("pytest")])}
    cmd = [sys.executable, "-m", *words[words.index("pytest") :], "-p", "no:cacheprovider"]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    stdout, _ = run.communicate(timeout=900)
    assert run.returncode == 0, stdout
    assert "6 passed" in stdout, stdout
    # the summary line the README shows, by the way it chose
    summary = next(x for x in stdout.splitlines() if x.startswith("clean state: "))
    assert "restores of db (postgres: shop by rows put back over " in summary, summary
    # that run's own resources only: under -n 2 another test's stack may be running meanwhile
    assert leftover_names(docker_client, f"{cleanup.PID}={run.pid}") == []
