"""A second engine reached over tcp:// (``.ci/remote-engine``): another host's engine, as far as
the plugin can tell. These run from a local session; .ci/run also runs the ``remote`` subset of
the whole suite with DOCKER_HOST pointing there."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from .helpers import HOME_TEST, SUITE_RUN_LABEL, App, ci_engine, leftover_names


@pytest.fixture
def on_remote(remote_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOCKER_HOST", remote_host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return remote_host


def test_a_port_nobody_listens_on_is_never_called_ready(app: App, pytester: pytest.Pytester, on_remote: str) -> None:
    """Without /proc the old wait took a held accept for an app (seen: 'ready in 2.61s')."""
    app.dockerfile('FROM {BUSYBOX}\nEXPOSE 80\nCMD ["sleep", "3600"]\n')
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest("--dockapp-timeout=3")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*last probe error: nothing listens on port 80 inside the container yet*"])


def test_the_app_is_dialled_at_the_engine_and_published_on_its_address(
    app: App, pytester: pytest.Pytester, on_remote: str
) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        def test_where(dockapp):
            assert dockapp.host == "10.250.0.2" and dockapp.get("/").text == "hello\\n"
            bindings = dockapp.container.attrs["HostConfig"]["PortBindings"]["80/tcp"]
            assert [b["HostIp"] for b in bindings] == ["10.250.0.2"]
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp: engine Docker * at tcp://10.250.0.2:2375 (DOCKER_HOST), builder *"])


def test_a_docker_context_alone_builds_and_runs_on_its_engine(
    app: App,
    pytester: pytest.Pytester,
    remote_host: str,
    remote_client: Any,
    docker_client: Any,
    buildkit_cli: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK ignores contexts and the CLI follows them: both must reach the context's engine."""
    config = tmp_path / "docker-config"
    cli = ["docker", "--config", str(config), "context"]
    subprocess.run([*cli, "create", "remote1", "--docker", f"host={remote_host}"], check=True, capture_output=True)
    subprocess.run([*cli, "use", "remote1"], check=True, capture_output=True)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    app.httpd()
    pytester.makepyfile(
        """
        def test_home(dockapp, dockapp_image):
            assert dockapp.get("/").text == "hello\\n"
            open("image-id", "w").write(dockapp_image.id)
        """
    )
    result = pytester.runpytest_subprocess("--dockapp-builder=buildkit", f"--dockapp-docker-cli={buildkit_cli}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp: engine * at tcp://10.250.0.2:2375 (context remote1), builder buildkit*"])
    image_id = (pytester.path / "image-id").read_text()
    assert remote_client.images.get(image_id).id == image_id
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)  # not built on the local engine


@pytest.fixture
def ssh_home(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> str:
    """The second engine's sshd (``.ci/remote-engine ssh``), configured in the pytester HOME for
    paramiko, and for the OpenSSH client (which reads the passwd entry's home, not $HOME) through
    an ``ssh`` on PATH that adds ``-F``."""
    import os

    folder = ci_engine("DOCKAPP_TEST_REMOTE_SSH", "an sshd for the second engine", ".ci/remote-engine ssh")
    ssh = pytester.path / ".ssh"
    ssh.mkdir(exist_ok=True)
    for name in ("config", "known_hosts"):
        (ssh / name).write_text(Path(folder, name).read_text())
    wrapper = pytester.path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {ssh / "config"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    return "ssh://root@10.250.0.2"


def test_an_ssh_engine_builds_runs_and_cleans_up(
    app: App,
    pytester: pytest.Pytester,
    ssh_home: str,
    remote_client: Any,
    builder_args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each session opens more than ten ssh channels' worth of calls: the SDK's adapter kept one
    open per request URL, and sshd (MaxSessions 10) refused the 11th in 5 of 6 runs."""
    monkeypatch.setenv("DOCKER_HOST", ssh_home)
    app.httpd()
    pytester.makepyfile(HOME_TEST)
    for _ in range(2):  # built, then reused
        result = pytester.runpytest_subprocess(*builder_args)
        result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp: engine Docker * at ssh://root@10.250.0.2 (DOCKER_HOST), builder *"])
    assert leftover_names(remote_client, SUITE_RUN_LABEL) == []


def test_an_ssh_engine_without_paramiko_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from pytest_dockapp.core.errors import ConfigurationError
    from pytest_dockapp.engine.endpoint import Endpoint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "paramiko" else real(name, *a))
    with pytest.raises(ConfigurationError, match="needs paramiko") as info:
        Endpoint("ssh://me@build-box", "DOCKER_HOST").client_kwargs()
    assert info.value.hint == "pip install 'pytest-dockapp[ssh]'"
