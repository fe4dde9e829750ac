"""The fault matrix: every way a run can go wrong gives one clear message and leaks nothing.

Each test runs a real pytest session on a real project against the real engine; the
``app`` fixture (through ``no_leaks``) fails the test if anything carrying the
plugin's labels is left behind. Cases are numbered as in the issue that asked for them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import DIAL_HOST, ENDPOINT, HOME_TEST, App, expect_error, pytest_cmd, start_holder

# 1. engine unreachable; 3. build failure; 5. ports; 6. exits at once; 7. unhealthy; 8. timeout; 9. invalid
# options: further below, with the readiness cases.


# 2. context missing, Dockerfile missing, empty, unknown instruction


def test_a_missing_context_is_a_usage_error_naming_it(app: App, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndockapp_context = no-such-dir\n")
    expect_error(pytester, lines=["*build context */no-such-dir is not a directory (it does not exist)*"])


def test_an_empty_dockerfile_says_it_needs_a_from(app: App, pytester: pytest.Pytester) -> None:
    (pytester.path / "Dockerfile").write_text("# nothing yet\n")
    expect_error(pytester, lines=["*Dockerfile has no FROM instruction*", "*hint: a Dockerfile starts with FROM*"])


def test_an_unknown_instruction_is_located_by_line(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile("FROM {BUSYBOX}\nRUNN echo typo\n")
    expect_error(pytester, lines=["*Dockerfile:2: unknown instruction 'RUNN'*", "*RUNN echo typo*"])


# 4. base image not available and cannot be pulled


def test_a_missing_base_image_names_the_build_arg_to_pass(
    app: App, pytester: pytest.Pytester, builder_args: list[str]
) -> None:
    app.dockerfile("ARG BASE_IMAGE=dockapp-test/not-a-base:1\nFROM ${BASE_IMAGE}\nEXPOSE 80\n")
    expect_error(
        pytester,
        *builder_args,
        lines=[
            "*base image 'dockapp-test/not-a-base:1' (FROM at *Dockerfile:2) is not on the engine and could not "
            "be pulled*",
            "*--dockapp-build-arg BASE_IMAGE=<a local image>*",
        ],
    )


def test_a_missing_base_image_passed_as_a_build_arg_is_not_told_to_pass_it(
    app: App, pytester: pytest.Pytester, builder_args: list[str]
) -> None:
    app.dockerfile("ARG BASE_IMAGE=node:20-slim\nFROM ${BASE_IMAGE}\nEXPOSE 80\n")
    result = expect_error(
        pytester,
        *builder_args,
        "--dockapp-build-arg=BASE_IMAGE=dockapp-test/not-a-base:2",
        lines=[
            "*base image 'dockapp-test/not-a-base:2' (FROM at *Dockerfile:2) is not on the engine*",
            "*hint: the build arg BASE_IMAGE=dockapp-test/not-a-base:2 names an image this engine does not have*",
        ],
    )
    result.stdout.no_fnmatch_line("*and pass --dockapp-build-arg BASE_IMAGE=*")


# 11. a fixed host port that is taken


@pytest.mark.local_engine("holds a port on this machine")
def test_fixed_host_port_in_use(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        import socket
        import pytest
        from pytest_dockapp.core.errors import PortError

        def test_taken(dockapp_factory):
            with socket.socket() as held:
                held.bind(("127.0.0.1", 0))
                held.listen()
                port = held.getsockname()[1]
                with pytest.raises(PortError, match="a fixed host port is already in use") as info:
                    dockapp_factory(host_ports={80: port})
                assert str(port) in str(info.value)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# 12. the container is killed or removed from outside mid-session


@pytest.mark.remote
def test_an_app_killed_outside_the_session_is_said(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        def test_1_kill(dockapp):
            dockapp.container.kill()

        def test_2_use(dockapp):
            dockapp.get("/")

        def test_3_remove(dockapp):
            dockapp.container.remove(force=True)

        def test_4_use(dockapp):
            dockapp.get("/")
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*container dockapp-* is not running any more (status exited, exit code 137)*",
            "*container dockapp-* no longer exists: it was removed outside this test session*",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*error in teardown*")


# 13. a huge ignored folder is not sent


def test_ignored_node_modules_is_not_sent(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX}
        COPY . /www
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """
    )
    modules = pytester.path / "node_modules"
    for i in range(100):
        pkg = modules / f"pkg{i}"
        pkg.mkdir(parents=True)
        for j in range(100):
            (pkg / f"f{j}.js").write_text("module.exports = 1\n")
    (pytester.path / "index.html").write_text("hello\n")
    (pytester.path / ".dockerignore").write_text("node_modules\n*.py\n")
    pytester.makepyfile(
        """
        def test_sent(dockapp):
            assert dockapp.get("/").status_code == 200
            assert dockapp.exec(["ls", "/www"])[1].split() == ["Dockerfile", "index.html"]
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# 14. a symlink that points outside the context is not followed


def test_symlink_out_of_context_is_not_followed(
    app: App, pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, builder_args: list[str]
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("outside-secret-marker\n")
    app.dockerfile(
        """
        FROM {BUSYBOX}
        COPY . /www
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """
    )
    os.symlink(outside, pytester.path / "abs-link.txt")
    os.symlink(os.path.relpath(outside, pytester.path), pytester.path / "rel-link.txt")
    (pytester.path / "index.html").write_text("hello\n")
    pytester.makepyfile(
        """
        def test_links(dockapp):
            for name in ("abs-link.txt", "rel-link.txt"):
                assert "outside-secret-marker" not in dockapp.get("/" + name).text
                code, out = dockapp.exec(["cat", "/www/" + name])
                assert code != 0 and "outside-secret-marker" not in out
        """
    )
    pytester.runpytest(*builder_args).assert_outcomes(passed=1)


# Security defaults


def test_security_defaults_and_secret_masking(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX}
        ARG API_TOKEN
        RUN echo "token is $API_TOKEN" && exit 4
        """
    )
    result = expect_error(pytester, "--dockapp-build-arg", "API_TOKEN=s3cr3t-value-123", lines=["*token is *****"])
    assert "s3cr3t-value-123" not in result.stdout.str()


@pytest.mark.remote
def test_containers_are_unprivileged_and_published_on_one_address(app: App, pytester: pytest.Pytester) -> None:
    """Loopback for a local engine; the engine's own address for a remote one (never 0.0.0.0)."""
    app.httpd()
    pytester.makepyfile(
        """
        def test_config(dockapp):
            host = dockapp.container.attrs["HostConfig"]
            assert host["Privileged"] is False
            assert not host.get("CapAdd")
            assert {b["HostIp"] for v in host["PortBindings"].values() for b in v} == {"PUBLISH"}
        """.replace("PUBLISH", ENDPOINT.publish_address())
    )
    pytester.runpytest().assert_outcomes(passed=1)


# A SIGKILLed session: no teardown runs; the next session sweeps what it left.


@pytest.mark.remote
def test_sigkilled_session_is_swept_by_the_next(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    proc = start_holder(pytester, "a")
    # The image's lease is made in the background beside the app's start: killed before it, a
    # session leaves none (seen once under -n 2), and this test is about sweeping both.
    leases = {"label": [f"org.pytest-dockapp.pid={proc.pid}", "org.pytest-dockapp.kind=lease"]}
    deadline = time.monotonic() + 30
    while not docker_client.containers.list(all=True, filters=leases) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    flt = {"label": [f"org.pytest-dockapp.pid={proc.pid}", "org.pytest-dockapp.kind=container"]}
    assert len(docker_client.containers.list(all=True, filters=flt)) == 1  # left behind: no teardown ran
    pytester.makepyfile(test_home=HOME_TEST)
    result = pytester.runpytest_subprocess("test_home.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["swept leftovers of killed sessions: 1 containers, 0 networks, 0 volumes, 0 images, 1 image leases"]
    )
    assert docker_client.containers.list(all=True, filters={"label": f"org.pytest-dockapp.pid={proc.pid}"}) == []


def test_concurrent_session_is_not_swept(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    proc = start_holder(pytester, "b")
    try:
        pytester.makepyfile(test_home=HOME_TEST)
        other = pytester.runpytest_subprocess("test_home.py")
        other.assert_outcomes(passed=1)
        other.stdout.no_fnmatch_line("swept*")
        assert len(docker_client.containers.list(filters={"label": f"org.pytest-dockapp.pid={proc.pid}"})) == 1
    finally:
        (pytester.path / "release-b").write_text("")
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "1 passed" in out


# pytest-xdist: one build for all workers, one container per worker, cleanup after a worker crash


@pytest.mark.remote
def test_xdist_workers_share_one_build(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra=f"RUN echo {os.getpid()}-{time.time()} > /www/build-id")  # a fresh image: a real build
    pytester.makepyfile(
        **{f"test_x{i}": "def test_a(dockapp):\n    assert dockapp.get('/').status_code == 200\n" for i in range(4)}
    )
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert out.count("] built pytest-dockapp/") == 1, out
    assert "built once by another pytest-xdist worker" not in out, out  # the built line says it for both
    assert out.count(": ready in ") == 2, out
    assert len(re.findall(r"^-+ dockapp -+$", out, re.M)) == 1, out  # one summary, not one per worker


@pytest.mark.remote
def test_xdist_worker_crash_leaves_nothing(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        test_crash="""
        import os

        def test_crash(dockapp):
            os._exit(3)  # the worker dies without teardown
        """,
        test_fine="def test_fine(dockapp):\n    assert dockapp.get('/').ok\n",
    )
    result = pytester.runpytest_subprocess("-n", "2")
    result.stdout.fnmatch_lines(["*worker * crashed*"])


@pytest.mark.remote
def test_healthcheck_unhealthy_fails_with_health_log(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra="HEALTHCHECK --interval=1s --retries=1 CMD echo db-down-marker && exit 1")
    expect_error(pytester, lines=["*container dockapp-* is unhealthy*", "*health log:*", "*db-down-marker*"])


@pytest.mark.remote
def test_container_that_exits_fails_at_once(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "echo config-missing-marker >&2; exit 3"]')
    result = expect_error(pytester, lines=["*exited with code 3*before it became ready*", "*config-missing-marker*"])
    result.stdout.no_fnmatch_line("*did not become ready within*")
    # The hint's command runs as written: it names the image, never a placeholder.
    result.stdout.fnmatch_lines(["hint: run the image by hand (docker run --rm -it [0-9a-f]*) to see why*"])
    result.stdout.no_fnmatch_line("*<image>*")


@pytest.mark.remote
def test_timeout_names_last_probe_error_and_logs(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "echo still-booting-marker; exec sleep 600"]')
    expect_error(
        pytester,
        "--dockapp-timeout",
        "1.5",
        lines=[
            "*did not become ready within 1.5s*",
            "*last probe error: nothing listens on port 80 inside the container yet*",
            "*still-booting-marker*",
            "*hint: raise dockapp_timeout*",
        ],
    )


def test_app_listening_on_container_loopback_is_explained(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["httpd", "-f", "-p", "127.0.0.1:80", "-h", "/www"]')
    expect_error(
        pytester,
        "--dockapp-timeout",
        "1",
        lines=["*listens on 127.0.0.1:80 inside the container*make it listen on 0.0.0.0:80*"],
    )


def test_build_failure_shows_step_line_and_output(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX}
        RUN echo compiling-marker && exit 7
        EXPOSE 80
        """
    )
    expect_error(
        pytester,
        "--dockapp-builder=classic",  # its own words: "returned a non-zero code"
        lines=[
            "*build failed at step 2 (*Dockerfile:2): RUN echo compiling-marker && exit 7*",
            "*returned a non-zero code: 7*",
            "*compiling-marker*",
        ],
    )


def test_a_missing_dockerfile_names_the_setting(app: App, pytester: pytest.Pytester) -> None:
    expect_error(pytester, lines=["*Dockerfile not found: *Dockerfile*", "*hint: set dockapp_dockerfile*"])


def test_no_expose_is_a_clear_error(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(expose="")
    expect_error(pytester, lines=["*EXPOSEs no TCP port*", "*hint: add `EXPOSE <port>`*dockapp_port*"])


def test_port_not_exposed_is_an_error(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    expect_error(
        pytester, "--dockapp-port", "9999", lines=["*port 9999 is not EXPOSEd by image*", "*the image exposes 80/tcp*"]
    )


def test_a_missing_prebuilt_image_is_a_clear_error(app: App, pytester: pytest.Pytester) -> None:
    expect_error(
        pytester,
        "--dockapp-image",
        "dockapp-test/not-there:1",
        lines=["*image 'dockapp-test/not-there:1' is not on the engine*"],
    )


def test_engine_unreachable_skips_or_fails_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(HOME_TEST)
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    env.pop("DOCKAPP_STRICT", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs"]
    out = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True)
    assert "1 skipped" in out.stdout
    assert "no Docker engine answered at unix:///nonexistent/docker.sock (DOCKER_HOST)" in out.stdout
    strict = subprocess.run(cmd, cwd=pytester.path, env={**env, "DOCKAPP_STRICT": "1"}, capture_output=True, text=True)
    assert "1 error" in strict.stdout, strict.stdout
    assert "strict mode: no engine is an error" in strict.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dockapp-build-arg", "NOEQUALS"],
            "*dockapp build args (--dockapp-build-arg): 'NOEQUALS' is not KEY=VALUE*",
        ),
        (
            ["--dockapp-timeout", "soon"],
            "*dockapp timeout (--dockapp-timeout): 'soon' is not a timeout from 0.1 to *",
        ),
        (["--dockapp-builder", "kaniko"], "*dockapp builder (--dockapp-builder): 'kaniko' is unknown; valid: auto, *"),
        (["--dockapp-port", "http"], "*dockapp port (--dockapp-port): 'http' is not a port; valid forms: 8080, *"),
        (
            ["--dockapp-sweep-age", "soon"],
            "*dockapp sweep age (--dockapp-sweep-age): 'soon' is not an age; valid: off,*",
        ),
    ],
)
def test_invalid_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_invalid_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndockapp_timeout = later\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dockapp timeout (ini dockapp_timeout): 'later' is not a timeout from 0.1 to *"])


@pytest.fixture
def foreign_containers(docker_client: Any) -> Iterator[list[str]]:
    """Containers a test creates as another run would; removed only after the test's own leak
    check has run (this fixture is set up first, so it is torn down last)."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        docker_client.api.remove_container(cid, force=True)


def test_leak_check_ignores_foreign_labelled_containers(
    foreign_containers: list[str], app: App, pytester: pytest.Pytester, docker_client: Any
) -> None:
    """Another project's run (or another run of this suite) on the same engine, starting while
    this test runs: its labelled containers are neither our leaks nor touched by our sessions."""
    foreign = docker_client.api.create_container(
        app.busybox,
        command=["sleep", "1"],
        name=f"foreign-run-{os.getpid()}-{time.time_ns()}",
        labels={
            "org.pytest-dockapp.owner": "pytest-dockapp",
            "org.pytest-dockapp.session": "someone-else",
            "org.pytest-dockapp.host": "another-ci-runner",
            "org.pytest-dockapp.created": f"{time.time():.0f}",
        },
    )
    foreign_containers.append(foreign["Id"])
    app.httpd()
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest().assert_outcomes(passed=1)
    assert docker_client.api.inspect_container(foreign["Id"])["Id"] == foreign["Id"]  # untouched


# SIGTERM (a CI runner cancelling the job) at every phase: teardown runs, then the run ends
# with the signal (-15), and nothing of the session is left.

SIGTERM_CONFTEST = """
import os, time, pytest

@pytest.fixture
def slow_teardown():
    yield
    open("teardown-started", "w").close()
    time.sleep(60)
"""


def _own(docker_client: Any, pid: int) -> list[str]:
    flt = {"label": f"org.pytest-dockapp.pid={pid}"}
    return [c["Names"][0] for c in docker_client.api.containers(all=True, filters=flt)]


def _until(check: Any, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the phase was never reached"
        time.sleep(0.05)


def _building(token: str) -> bool:
    """Whether a BuildKit RUN step carrying ``token`` runs: BuildKit's steps are processes of its
    own, not containers the engine lists (so on this machine's engines only)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize(
    "phase",
    [
        "build",
        pytest.param("buildkit build", marks=pytest.mark.local_engine("watches the build's processes in /proc")),
        "readiness",
        "test body",
        "teardown",
    ],
)
@pytest.mark.remote
def test_sigterm_tears_down_and_exits_with_the_signal(
    app: App, pytester: pytest.Pytester, docker_client: Any, phase: str, buildkit_cli: str
) -> None:
    token = uuid.uuid4().hex
    if "build" in phase:
        app.httpd(extra=f"RUN sleep 30 && echo {token}")  # the shell waits, so its command line shows the token
    elif phase == "readiness":
        app.httpd(cmd='["sleep", "60"]')
    else:
        app.httpd()
    pytester.makeconftest(SIGTERM_CONFTEST)
    pytester.makepyfile(
        test_hold=f"""
        import time

        def test_hold(dockapp{", slow_teardown" if phase == "teardown" else ""}):
            open("in-test", "w").close()
            time.sleep(0 if {phase == "teardown"} else 60)
        """
    )
    builder = f"--dockapp-builder=buildkit --dockapp-docker-cli={buildkit_cli}" if "buildkit" in phase else ""
    proc = subprocess.Popen(
        pytest_cmd("test_hold.py", "--dockapp-timeout=120", *(builder.split() or ["--dockapp-builder=classic"])),
        cwd=pytester.path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if phase == "build":  # classic: each RUN step is a container the engine lists
        _until(lambda: any(token in c.get("Command", "") for c in docker_client.api.containers()), proc)
    elif phase == "buildkit build":
        _until(lambda: _building(token), proc)
    elif phase == "readiness":
        _until(lambda: bool(_own(docker_client, proc.pid)), proc)
        time.sleep(0.5)
    elif phase == "test body":
        _until((pytester.path / "in-test").exists, proc)
    else:
        proc_file = pytester.path / "teardown-started"
        _until(proc_file.exists, proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, out
    assert time.monotonic() - started < 30, out  # it did not wait for the build, app or sleep to end
    assert _own(docker_client, proc.pid) == [], out


@pytest.mark.parametrize("order", ["fail-first", "pass-first"])
def test_keep_keeps_only_failing_tests_apps_and_later_runs_leave_them(
    app: App, pytester: pytest.Pytester, docker_client: Any, order: str
) -> None:
    app.httpd()
    tests = {
        "fail": "def test_fail(dockapp_factory):\n    dockapp_factory(name='keep-f-{u}')\n    assert False\n",
        "pass": "def test_pass(dockapp_factory):\n    dockapp_factory(name='keep-p-{u}')\n",
    }
    u = uuid.uuid4().hex[:8]
    first, second = ("fail", "pass") if order == "fail-first" else ("pass", "fail")
    pytester.makepyfile(test_keep=tests[first].format(u=u) + "\n\n" + tests[second].format(u=u))
    try:
        result = pytester.runpytest_subprocess("--dockapp-keep")
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(
            [f"kept keep-f-{u}-kept at http://{DIAL_HOST}:*; remove: docker rm -f keep-f-{u}-kept"]
        )
        names = [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
        assert f"keep-f-{u}-kept" in names and f"keep-p-{u}" not in names
        # The next session on this host finds its owner dead, but it was kept on purpose.
        pytester.makepyfile(test_home=HOME_TEST)
        pytester.runpytest_subprocess("test_home.py").assert_outcomes(passed=1)
        assert docker_client.api.inspect_container(f"keep-f-{u}-kept")["State"]["Running"]
        swept = pytester.runpytest_subprocess("test_home.py", "--dockapp-sweep-kept")
        swept.stdout.fnmatch_lines(["swept leftovers of killed sessions: 1 containers*"])
        assert f"keep-f-{u}-kept" not in [c["Names"][0].lstrip("/") for c in docker_client.api.containers(all=True)]
    finally:
        for name in (f"keep-f-{u}-kept", f"keep-f-{u}", f"keep-p-{u}"):
            with contextlib.suppress(Exception):
                docker_client.api.remove_container(name, force=True)


def test_sweep_leaves_a_pid_namespace_neighbour_alone(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    """A CI job in a container with host networking has this host's name, but its pids mean
    nothing here: its resources must not be judged dead by pid."""
    import socket

    from pytest_dockapp.engine import cleanup

    neighbour = docker_client.api.create_container(
        app.busybox,
        command=["sleep", "1"],
        name=f"neighbour-{uuid.uuid4().hex[:8]}",
        labels={
            cleanup.OWNER: cleanup.OWNER_VALUE,
            cleanup.SESSION: "neighbour",
            cleanup.HOST: socket.gethostname(),
            cleanup.PID: "4000000",  # no such pid here; in its own namespace it is alive
            cleanup.PIDNS: "4026539999",
            cleanup.BOOT: cleanup.boot_id(),
            cleanup.CREATED: f"{time.time():.0f}",
        },
    )
    try:
        app.httpd()
        pytester.makepyfile(HOME_TEST)
        result = pytester.runpytest()
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("swept*")
        assert docker_client.api.inspect_container(neighbour["Id"])["Id"] == neighbour["Id"]
    finally:
        docker_client.api.remove_container(neighbour["Id"], force=True)


def test_secrets_are_masked_in_every_report_channel(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.httpd(cmd='["sh", "-c", "echo connecting with password $DB_PASSWORD; exec httpd -f -p 80 -h /www"]')
    monkeypatch.setenv("TEST_DB_PASSWORD", "pw-4f8a2c91")  # not in the test's source: tracebacks quote it
    pytester.makepyfile(
        """
        import os

        def test_fails(dockapp_factory):
            dockapp_factory(env={"DB_PASSWORD": os.environ["TEST_DB_PASSWORD"]})
            assert False
        """
    )
    result = pytester.runpytest(
        "--junitxml=junit.xml", "-o", "junit_logging=all", "--dockapp-build-arg=API_TOKEN=tok-77e1d0b3"
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["connecting with password *****"])
    result.stdout.fnmatch_lines(["*build arg API_TOKEN looks secret: build arg values are stored in the image's*"])
    junit = (pytester.path / "junit.xml").read_text()
    for secret in ("pw-4f8a2c91", "tok-77e1d0b3"):
        assert secret not in out and secret not in junit


def test_arg_without_value_in_from_names_the_arg_to_pass(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile("ARG BASE\nFROM ${BASE}\nEXPOSE 80\n")
    expect_error(
        pytester,
        lines=[
            "*Dockerfile:2: `FROM ${BASE}` names no image: ARG BASE has no default and no value",
            "hint: pass --dockapp-build-arg BASE=<image>*",
        ],
    )


def test_a_fixed_name_is_free_again_for_the_next_test(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    name = f"fixed-{uuid.uuid4().hex[:8]}"
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_named(dockapp_factory, n):
            assert dockapp_factory(name="{name}").get("/").ok
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)


def test_a_name_taken_by_another_container_is_a_clear_error(
    app: App, pytester: pytest.Pytester, docker_client: Any
) -> None:
    app.httpd()
    name = f"taken-{uuid.uuid4().hex[:8]}"
    other = docker_client.api.create_container(app.busybox, command=["true"], name=name)
    try:
        pytester.makepyfile(f"def test_named(dockapp_factory):\n    dockapp_factory(name='{name}')\n")
        result = pytester.runpytest()
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [f"*cannot create container {name}: the name is taken*", "*hint: choose another name=*"]
        )
        result.stdout.fnmatch_lines(["E*pytest_dockapp.ContainerError: cannot create container*"])
    finally:
        docker_client.api.remove_container(other["Id"], force=True)


def test_an_app_that_died_during_the_test_says_so_first(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "httpd -f -p 80 -h /www & sleep 1; echo dying-now; exit 3"]')
    pytester.makepyfile(
        """
        import time

        def test_after_death(dockapp):
            time.sleep(3)
            dockapp.session.get("/", timeout=5)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- dockapp: dockapp-* is no longer running: exited with code 3 at * -*",
            "dying-now",
            "*- dockapp logs: dockapp-* (since this test started) -*",
        ]
    )


def test_huge_log_lines_are_capped(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "head -c 3000000 /dev/zero | tr \\"\\\\\\\\0\\" x; echo; exec httpd -f -p 80 -h /www"]')
    pytester.makepyfile("def test_fails(dockapp):\n    assert False\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "more characters cut by pytest-dockapp" in out
    assert len(out) < 200_000


def test_a_udp_main_port_is_refused_at_once(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(expose="EXPOSE 80 53/udp")
    result = expect_error(
        pytester,
        "--dockapp-port=53/udp",
        "--dockapp-timeout=60",
        lines=["*main port 53/udp is UDP: pytest-dockapp can only tell when a TCP port is ready*"],
    )
    assert result.duration < 30


def test_a_health_path_that_answers_404_is_said_early(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["httpd", "-f", "-vv", "-p", "80", "-h", "/www"]')
    expect_error(
        pytester,
        "--dockapp-health-path=/nope",
        "--dockapp-timeout=4",
        lines=[
            "dockapp: dockapp-*: GET /nope answered HTTP 404 for *s: is dockapp_health_path right?*",
            "*did not become ready within 4s*",
            "*hint: the app answers, but not 2xx/3xx on /nope: is dockapp_health_path right?*",
        ],
    )


def test_a_hanging_healthcheck_honours_its_timeout(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra="HEALTHCHECK --interval=30s --timeout=1s CMD sleep 300")
    result = expect_error(
        pytester,
        "--dockapp-timeout=5",
        lines=[
            "*last probe error: HEALTHCHECK did not finish within its timeout of 1s*",
            "*hint: the app answers on its port, but its HEALTHCHECK does not pass*",
        ],
    )
    result.stdout.no_fnmatch_line("*listens on 0.0.0.0*")


def test_the_log_tail_leaves_out_our_own_probe_requests(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(
        extra='RUN mkdir -p /www/cgi-bin && printf \'#!/bin/sh\\necho "request from $HTTP_USER_AGENT" >&2\\n'
        'printf "Status: 503\\\\r\\\\n\\\\r\\\\n"\\n\' > /www/cgi-bin/health && chmod +x /www/cgi-bin/health',
        cmd='["sh", "-c", "echo app-started; exec httpd -f -p 80 -h /www"]',
    )
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest("--dockapp-health-path=/cgi-bin/health", "--dockapp-timeout=3")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*app-started", "*lines of pytest-dockapp's own probe requests left out)"])
    result.stdout.no_fnmatch_line("*request from pytest-dockapp-probe*")


# A lost or frozen engine at each phase: one DockappError naming the phase and the endpoint, a
# bounded wait, a session end that never raises and lists what may be left, and a next session
# that sweeps it.

ENGINE_TEST = """
import os, time

def test_app(dockapp):
    open("in-test", "w").close()
    while not os.path.exists("go-on"):
        time.sleep(0.05)
"""


@pytest.mark.local_engine("its proxy forwards to this machine's engine socket")
@pytest.mark.parametrize(
    ("fault", "phase"),
    [
        ("lost", "readiness"),
        ("lost", "test body"),
        ("frozen", "readiness"),
        ("frozen", "test body"),
        # Trust III, 2 and 3: a raw urllib3 ProtocolError, and a wait of more than 580 s.
        ("lost", "classic build"),
        ("frozen", "buildkit build"),
    ],
)
def test_a_lost_or_frozen_engine_is_one_clear_error_and_nothing_hangs(
    app: App,
    pytester: pytest.Pytester,
    docker_client: Any,
    tmp_path: Path,
    fault: str,
    phase: str,
    request: pytest.FixtureRequest,
) -> None:
    from .helpers import EngineProxy

    token = uuid.uuid4().hex
    app.httpd(
        cmd='["sleep", "600"]' if phase == "readiness" else '["httpd", "-f", "-p", "80", "-h", "/www"]',
        # The shell waits, so its command line shows the token (a last command is exec'd).
        extra=f"RUN sleep 600 && echo {token}" if "build" in phase else "",
    )
    pytester.makepyfile(test_engine=ENGINE_TEST)
    proxy = EngineProxy(tmp_path / "engine.sock")
    builder = ["--dockapp-builder=" + phase.split()[0]] if "build" in phase else []
    if phase == "buildkit build":
        builder.append(f"--dockapp-docker-cli={request.getfixturevalue('buildkit_cli')}")
    proc = subprocess.Popen(
        pytest_cmd("test_engine.py", "--dockapp-timeout=20", "-p", "no:xdist", *builder),
        cwd=pytester.path,
        env={**os.environ, "DOCKER_HOST": proxy.url},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        if phase == "readiness":
            _until(lambda: bool(_own(docker_client, proc.pid)), proc)
            time.sleep(0.5)
        elif "build" in phase:
            _until(lambda: _building(token), proc)
        else:
            _until((pytester.path / "in-test").exists, proc)
        faulted = time.monotonic()
        proxy.freeze() if fault == "frozen" else proxy.kill()
        (pytester.path / "go-on").write_text("")
        out, _ = proc.communicate(timeout=180)
        took = time.monotonic() - faulted
    finally:
        proxy.kill()
        if proc.poll() is None:
            proc.kill()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    assert f"the Docker engine at {proxy.url} (DOCKER_HOST) stopped answering while " in out, out
    assert took < 120, f"{took:.0f}s from the fault to the session's end\n{out}"
    if "build" in phase:
        assert f"stopped answering while building {pytester.path}" in out, out
        return  # nothing was created yet, and a next build would run the 600 s step
    assert "may be left on the engine: " in out, out
    # The engine is back for the next session (on the real socket): it sweeps what was left.
    assert _own(docker_client, proc.pid)
    pytester.makepyfile(test_next="def test_next(dockapp_image):\n    pass\n")
    pytester.runpytest_subprocess("test_next.py").assert_outcomes(passed=1)
    assert _own(docker_client, proc.pid) == []
    print(f"{fault} engine at {phase}: {took:.1f}s from the fault to the session's end")


# BuildKit leaves a secret's value out of the step's cache key: a step built with another value
# would hit. NONCE makes the step one no earlier run built.
SECRET_DOCKERFILE = """
FROM {BUSYBOX}
RUN --mount=type=secret,id=token mkdir -p /www && sha256sum /run/secrets/token | cut -c1-64 > /www/index.html # NONCE
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""


def test_build_secrets_reach_the_step_and_never_the_image(
    app: App, pytester: pytest.Pytester, docker_client: Any, buildkit_cli: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import tempfile

    from pytest_dockapp.engine.cleanup import pid_namespace

    value = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("MY_TOKEN", value)
    app.dockerfile(SECRET_DOCKERFILE.replace("NONCE", uuid.uuid4().hex))
    # Trust III, 7: what a SIGKILLed build leaves, its secret file included: the next build sweeps it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"dockapp-build-{pid_namespace() or 0}-{dead.pid}-0-"))
    (stale / "secret-0123").write_text("left by a killed run")
    pytester.makepyfile(
        f"""
        def test_secret(dockapp, dockapp_image):
            assert dockapp.get("/").text.strip() == "{hashlib.sha256(value.encode()).hexdigest()}"
            open("image-id", "w").write(dockapp_image.id)
        """
    )
    result = pytester.runpytest(
        "--dockapp-builder=buildkit", f"--dockapp-docker-cli={buildkit_cli}", "--dockapp-secret=token=MY_TOKEN"
    )
    result.assert_outcomes(passed=1)
    history = docker_client.api.history((pytester.path / "image-id").read_text())
    assert value not in str(history)
    assert not stale.exists()


def test_build_secrets_on_the_classic_builder_say_they_need_buildkit(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TOKEN", "x-1234")
    app.dockerfile(SECRET_DOCKERFILE)
    expect_error(
        pytester,
        "--dockapp-builder=classic",
        "--dockapp-secret=token=MY_TOKEN",
        lines=["*build secrets (token) need BuildKit, and the builder in use is classic*"],
    )


SECRETS_BY_OTHER_NAMES = """
services:
  web:
    build: .
    environment:
      DB_PASS: pass-1234abcd
      MYSQL_PWD: pwd-5678efgh
      DATABASE_URL: postgres://app:pw@db/app
      SIGNED_WITH: ${SIGNING_KEY_VALUE}
secrets:
  signing:
    environment: SIGNING_KEY_VALUE
"""


def test_secrets_by_another_name_are_masked_by_their_value(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.httpd(
        cmd='["sh", "-c", "echo boot $DB_PASS $MYSQL_PWD $DATABASE_URL $SIGNED_WITH; exec httpd -f -p 80 -h /www"]'
    )
    monkeypatch.setenv("SIGNING_KEY_VALUE", "sig-9999zzzz")  # a compose secret's value, under a plain name
    (pytester.path / "compose.yaml").write_text(SECRETS_BY_OTHER_NAMES)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile("def test_fails(dockapp):\n    assert False\n")
    result = pytester.runpytest("--junitxml=junit.xml", "-o", "junit_logging=all")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["boot ***** ***** postgres://app:*****@db/app *****"])
    out, junit = result.stdout.str(), (pytester.path / "junit.xml").read_text()
    for secret in ("pass-1234abcd", "pwd-5678efgh", "app:pw@", "sig-9999zzzz"):
        assert secret not in out and secret not in junit, secret
