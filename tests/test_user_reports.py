"""What a user reads: secrets masked in every channel, one report per failure, stable JUnit
names, and locations in the user's files (trust III)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .helpers import BUSYBOX, HOME_TEST, App

TOKEN = "tok-SEEKRIT-111"
SECRET_ECHO = """
FROM {BUSYBOX}
ARG API_TOKEN
RUN echo "configuring with token $API_TOKEN" && sleep 1.5 && mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

SHOW_REPR = """
def test_show(dockapp, dockapp_image):
    print("REPR", repr(dockapp), repr(dockapp_image), repr(dockapp_image.record))
    assert dockapp is None
"""


def test_a_secret_build_arg_reaches_no_output_report_or_file(
    app: App, pytester: pytest.Pytester, builder_args: list[str]
) -> None:
    # Trust III, 4-6: the live progress, builds.json and the -vv repr (terminal and JUnit XML)
    # all showed the value.
    app.dockerfile(SECRET_ECHO.replace("index.html", f"index.html # {os.urandom(6).hex()}"))
    pytester.makepyfile(SHOW_REPR)
    result = pytester.runpytest_subprocess(  # the live progress shows in a real process's output
        *builder_args, "-vv", "--junitxml=out.xml", f"--dockapp-build-arg=API_TOKEN={TOKEN}"
    )
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "dockapp: building [" in text and "configuring with token" in text  # shown, the value masked
    assert TOKEN not in text
    assert TOKEN not in (pytester.path / "out.xml").read_text()
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "pytest-dockapp"
    for path in cache.rglob("*"):
        assert not path.is_file() or TOKEN not in path.read_text(errors="replace"), path
    # Trust III, 18: the warning named pytest_dockapp/prestart.py; it is the user's setting.
    result.stdout.fnmatch_lines(["*command line:1: DockappWarning: build arg API_TOKEN looks secret*"])
    line = next(line for line in result.stdout.lines if line.startswith("REPR"))
    assert line.startswith("REPR DockApp(name='dockapp-")
    assert "steps=" in line and "output=" not in line and len(line) < 600, line


def test_a_build_secret_echoed_by_a_step_is_masked_in_the_repr(
    app: App, pytester: pytest.Pytester, buildkit_cli: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "hx-BUILDSECRET-7788"
    monkeypatch.setenv("MY_SECRET", value)
    app.dockerfile(
        """
        FROM {BUSYBOX}
        RUN --mount=type=secret,id=tok echo "the secret is $(cat /run/secrets/tok)" # REPR-NONCE
        RUN mkdir -p /www && echo hello > /www/index.html
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """.replace("REPR-NONCE", os.urandom(6).hex())
    )
    pytester.makepyfile(SHOW_REPR)
    result = pytester.runpytest(
        "--dockapp-builder=buildkit", f"--dockapp-docker-cli={buildkit_cli}", "--dockapp-secret=tok=MY_SECRET", "-vv"
    )
    result.assert_outcomes(failed=1)
    assert value not in result.stdout.str()
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "pytest-dockapp" / "builds.json"
    assert value not in cache.read_text()


def test_a_session_build_failure_is_told_once_then_referred_to(app: App, pytester: pytest.Pytester) -> None:
    # Trust III, 15: a missing base image's build output was printed in each of 8 tests.
    app.dockerfile("FROM dockapp-test/no-such-base:1\nEXPOSE 80\n")
    pytester.makepyfile(**{f"test_{n}": HOME_TEST for n in "abc"})
    result = pytester.runpytest()
    result.assert_outcomes(errors=3)
    text = result.stdout.str().split("short test summary info")[0]  # pytest's own one line per error follows
    assert text.count("is not on the engine and could not be pulled") == 1, text
    assert text.count("(the session build failed: see the first error above, in test_a.py::test_home)") == 2


def test_junit_property_names_are_stable_across_runs(app: App, pytester: pytest.Pytester) -> None:
    # Trust III, 16: they carried the container name (dockapp.dockapp-myapp-32d397f1-1.image).
    app.httpd()
    pytester.makepyfile(
        """
        def test_apps(dockapp, dockapp_factory):
            dockapp_factory(name="named-one")
            dockapp_factory()
        """
    )

    def names() -> list[str]:
        pytester.runpytest("--junitxml=out.xml").assert_outcomes(passed=1)
        return sorted(str(p.get("name")) for p in ET.parse(pytester.path / "out.xml").iter("property"))

    first = names()
    assert first == names()
    assert {n.rsplit(".", 1)[0] for n in first} == {"dockapp.dockapp", "dockapp.named-one", "dockapp.factory-2"}


def test_errors_and_skips_point_at_the_users_test(app: App, pytester: pytest.Pytester) -> None:
    # Trust III, 18 and 19: plugin frames in --tb=short, a skip reported at plugin_state.py, and
    # ready="healty" not naming the argument.
    pytester.makepyfile(
        test_factory=f"""
        def test_bad_ready(dockapp_factory):
            dockapp_factory(image="{BUSYBOX}", ready="healty")

        def test_no_port(dockapp_factory):
            dockapp_factory(image="{BUSYBOX}")

        def test_misspelt_argument(dockapp_factory):
            dockapp_factory(image="{BUSYBOX}", health_pth="/health")
        """
    )
    result = pytester.runpytest("--tb=short")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*dockapp_factory(ready='healty'): 'healty' is unknown*"])
    result.stdout.fnmatch_lines(["*dockapp_factory() got an unknown argument: health_pth*"])
    result.stdout.fnmatch_lines(["test_factory.py:5: in test_no_port", "*EXPOSEs no TCP port*"])
    assert "pytest_dockapp/" not in result.stdout.str(), result.stdout.str()  # no frame of ours


def test_a_skip_for_a_missing_engine_names_the_users_test(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.delenv("DOCKAPP_STRICT", raising=False)
    pytester.makepyfile(test_factory=f"def test_f(dockapp_factory):\n    dockapp_factory(image='{BUSYBOX}')\n")
    result = pytester.runpytest_subprocess("-rs", f"--dockapp-context={tmp_path}", "-p", "no:randomly")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_factory.py:1: pytest-dockapp: no Docker engine answered*"])


def test_the_header_names_the_engine_under_xdist(app: App, pytester: pytest.Pytester) -> None:
    # Trust III, 20.
    app.httpd()
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp: engine * at *, builder *"])


def test_our_healthcheck_runs_stay_out_of_the_tests_log_section(app: App, pytester: pytest.Pytester) -> None:
    # Trust III, 21: `[::ffff:127.0.0.1]:53636: response:200` under "since this test started".
    # Our HEALTHCHECK runs end with the wait; the engine runs the image's own only every hour here.
    app.httpd(
        extra="HEALTHCHECK --interval=1h CMD wget -q -O /dev/null http://127.0.0.1/ || exit 1",
        cmd='["httpd", "-f", "-vv", "-p", "80", "-h", "/www"]',
    )
    pytester.makepyfile("import time\n\ndef test_f(dockapp):\n    time.sleep(1)\n    assert False\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    section = result.stdout.str().split("dockapp logs:", 1)[1]
    assert "127.0.0.1" not in section.split("short test summary", 1)[0], section
