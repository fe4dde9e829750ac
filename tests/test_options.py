"""Settings and options, engine-free."""

from __future__ import annotations

import pytest

from pytest_dockapp import distributed, plugin_state
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine import client as engine


@pytest.mark.parametrize(("age", "swept"), [("off", None), ("0", 0.0), ("90m", 5400.0)])
def test_the_crash_sweep_under_xdist_honours_an_explicit_sweep_age(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, age: str, swept: float | None
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(engine, "connect", lambda: object())
    monkeypatch.setattr(cleanup, "sweep", lambda client, session, max_age, **kw: calls.append(max_age))
    config = pytester.parseconfigure(f"--dockapp-sweep-age={age}")
    controller = distributed.XdistController(config.stash[plugin_state.STATE])
    controller.crashed = True
    controller.pytest_sessionfinish()
    controller.pytest_unconfigure()
    assert calls == ([] if swept is None else [swept])


def test_invalid_sweep_age_names_the_valid_forms(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError, match="valid: off, 3600, 90m, 6h, 2d"):
        pytester.parseconfigure("--dockapp-sweep-age=soon")


def test_the_readme_settings_table_is_the_generated_one() -> None:
    from pytest_dockapp.options import markdown_table

    from .helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table")
    table = readme[readme.index("\n", start) + 1 : readme.index("<!-- end settings-table -->")].strip()
    assert table == markdown_table()


PRECEDENCE_TEST = """
from pytest_dockapp import plugin_state as plugin

def test_effective(pytestconfig, dockapp_target, dockapp_timeout, dockapp_build_args):
    state = plugin.state_of(pytestconfig)
    target = plugin.pick(state, "target", dockapp_target)
    timeout = plugin.pick(state, "timeout", dockapp_timeout)
    args = ",".join(f"{k}={v}" for k, v in sorted(dockapp_build_args.items()))
    print(f"EFFECTIVE target={target} timeout={timeout:g} args={args}")
"""

FIXTURE_OVERRIDE = """
import pytest

@pytest.fixture(scope="session")
def dockapp_target():
    return "fixture-stage"
"""


@pytest.mark.parametrize(
    ("ini", "conftest", "args", "want"),
    [
        (False, False, [], "target=None timeout=60 args="),
        (True, False, [], "target=ini-stage timeout=30 args=A=ini,B=ini"),
        (True, True, [], "target=fixture-stage timeout=30 args=A=ini,B=ini"),
        (
            True,
            True,
            ["--dockapp-target=cli-stage", "--dockapp-timeout=5", "--dockapp-build-arg=B=cli"],
            "target=cli-stage timeout=5 args=A=ini,B=cli",
        ),
    ],
)
def test_precedence_is_cli_then_fixture_then_ini_then_default(
    pytester: pytest.Pytester, ini: bool, conftest: bool, args: list[str], want: str
) -> None:
    """The settings come from the configuration alone: no build, no container."""
    if ini:
        pytester.makeini(
            "[pytest]\ndockapp_target = ini-stage\ndockapp_timeout = 30\ndockapp_build_args =\n    A=ini\n    B=ini\n"
        )
    if conftest:
        pytester.makeconftest(FIXTURE_OVERRIDE)
    pytester.makepyfile(PRECEDENCE_TEST)
    # A subprocess: in-process runs would import requests afresh each time (pytester restores
    # sys.modules between them) and the docker client would then mix two copies of it.
    result = pytester.runpytest_subprocess("-s", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*EFFECTIVE {want}"])


def test_the_public_surface_is_one_list() -> None:
    import ast
    import importlib

    import pytest_dockapp
    from pytest_dockapp.core import errors

    from .helpers import ROOT

    source = ast.parse((ROOT / "pytest_dockapp" / "__init__.py").read_text())
    typed = {
        alias.name: node.module
        for block in source.body
        if isinstance(block, ast.If)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {name: f".{module}" for name, module in pytest_dockapp._EXPORTS.items()} == {
        name: f".{module}" for name, module in typed.items()
    }
    for name in pytest_dockapp.__all__:
        assert getattr(pytest_dockapp, name) is not None
    for name in pytest_dockapp._EXPORTS:
        assert getattr(pytest_dockapp, name) is getattr(
            importlib.import_module(f"pytest_dockapp.{pytest_dockapp._EXPORTS[name]}"), name
        )
    assert pytest_dockapp.PortError is errors.PortError and issubclass(
        pytest_dockapp.PortError, pytest_dockapp.DockappError
    )


def test_a_misspelled_ini_key_names_the_likely_one_and_fails_under_strict(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndockap_timeout = 5\ntimeout = 3\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*unknown ini key 'dockap_timeout': did you mean dockapp_timeout?*"])
    result.stdout.no_fnmatch_line("*unknown ini key 'timeout'*")  # another plugin's key: not ours to judge
    strict = pytester.runpytest("--dockapp-strict")
    assert strict.ret == pytest.ExitCode.USAGE_ERROR
    strict.stderr.fnmatch_lines(["*dockapp: unknown ini key 'dockap_timeout': did you mean dockapp_timeout?*"])


@pytest.mark.parametrize(
    ("args", "ini", "words"),
    [
        (["--dockapp-host-ip=not-an-ip"], "", "dockapp host ip (--dockapp-host-ip): 'not-an-ip' is not an IP address"),
        ([], "dockapp_host_ip = 999.1.1.1", "dockapp host ip (ini dockapp_host_ip): '999.1.1.1' is not an IP address"),
        ([], "dockapp_strict = maybe", "dockapp strict (ini dockapp_strict): 'maybe' is not a boolean"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_key(
    pytester: pytest.Pytester, args: list[str], ini: str, words: str
) -> None:
    # Trust III, 11 and 12: a bad publish address waited out the whole timeout; a bad boolean
    # in the ini file did not say which key.
    pytester.makeini(f"[pytest]\n{ini}\n")
    with pytest.raises(pytest.UsageError) as info:
        pytester.parseconfigure(*args)
    assert words in str(info.value)


def test_help_shows_defaults_as_the_readme_does(pytester: pytest.Pytester) -> None:
    # Trust III, 22: --help said "(default: None)" and "60.0" where the README says "none" and 60.
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())  # argparse wraps lines
    assert "(default: None)" not in text and "60.0" not in text
    assert "seconds to wait for the app to become ready (default: 60)" in text
    assert "target stage to build (default: last stage)" in text
    assert "HTTP path that answers 2xx/3xx once the app is ready (default: none)" in text


def test_a_misspelled_ini_key_is_reported_at_the_ini_file(pytester: pytest.Pytester) -> None:
    # Trust III, 18: the warning pointed at site-packages/pytest_dockapp/options.py.
    pytester.makeini("[pytest]\n\ndockap_timeout = 5\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*tox.ini:3: DockappWarning: unknown ini key 'dockap_timeout'*"])
    result.stdout.no_fnmatch_line("*options.py*")


def test_a_sweep_age_shorter_than_a_session_warns_what_it_may_remove(pytester: pytest.Pytester) -> None:
    # Trust III, 13: with 1s the sweep removed a live run's container in another PID namespace.
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--dockapp-sweep-age=1s")
    result.stdout.fnmatch_lines(
        ["*DockappWarning: dockapp_sweep_age 1s is shorter than 10 minutes: *live* on another host*"]
    )
