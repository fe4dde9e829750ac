"""The pytest plugin's entry point: options and configure, as in pytest-xdist. The fixtures,
the cache marker, reporting, lint items and xdist support each live in a module of their own;
the hooks other plugins may implement are :class:`Hooks`.

Everything that talks to Docker lives in the library modules; they are imported lazily, so
that a pytest run that uses no dockapp fixture pays nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_dockapp.distributed import XdistController, xdist_loaded
from pytest_dockapp.engine.signals import TerminationGuard  # standard library only: cheap to load with the plugin
from pytest_dockapp.lint_items import LintCollector
from pytest_dockapp.options import Settings, add_options, check_ini_keys, resolve, warn_at_ini
from pytest_dockapp.plugin_state import STATE, PluginState

if TYPE_CHECKING:
    from pytest_dockapp.builds.record import BuildRecord
    from pytest_dockapp.cache.check import CacheReport
    from pytest_dockapp.run.app import DockApp

pytest_plugins = [
    "pytest_dockapp.fixtures",
    "pytest_dockapp.clean",
    "pytest_dockapp.marker",
    "pytest_dockapp.reporting",
]

_GUARD = pytest.StashKey[TerminationGuard]()


class Hooks:
    """Hooks that other plugins and ``conftest.py`` files can implement, e.g. to push build
    timings to a dashboard or seed an app with data::

        def pytest_dockapp_app_ready(app):
            app.post("/fixtures", json={"users": 3})
    """

    @pytest.hookspec
    def pytest_dockapp_build_finished(self, config: pytest.Config, record: BuildRecord) -> None:
        """An image of this session was built, or reused (``record.reused``): its per-step record."""

    @pytest.hookspec
    def pytest_dockapp_app_ready(self, config: pytest.Config, app: DockApp) -> None:
        """An app is running and ready, before any test gets it. An exception here fails the fixture
        that started it (and the app is still removed)."""

    @pytest.hookspec
    def pytest_dockapp_cache_checked(self, config: pytest.Config, item: pytest.Item, report: CacheReport) -> None:
        """A ``dockapp_cache`` check of ``item`` ran, before its verdict fails or passes the test.

        ``report.steps``: the rebuild's steps (``index``, ``stage``, ``line``, ``text``, ``cached``,
        ``cacheable``); ``report.allowed``: those the Dockerfile lets miss after the change;
        ``report.demanded``: those ``cached=`` requires that missed; ``report.ok`` and
        ``report.summary()``: the verdict; ``report.warm.tag``: the warm image; ``report.advice``:
        the fix of a failing check (``.text``, ``.dockerfile``, ``.verified``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--dockapp-down``: remove this project's reusable apps and stacks, and run no test."""
    if not config.getoption("dockapp_down"):
        return None
    from pytest_dockapp.core.errors import DockappError
    from pytest_dockapp.engine.client import connect
    from pytest_dockapp.services.reuse import down

    try:
        lines = down(connect(), config.rootpath)
    except DockappError as exc:
        print(f"dockapp down: {exc}")
        return 1
    for line in lines:
        print(f"dockapp down: {line}")
    return 0


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(Hooks)


def pytest_configure(config: pytest.Config) -> None:
    guard = config.stash[_GUARD] = TerminationGuard()
    guard.install()
    config.addinivalue_line(
        "markers",
        "dockapp_cache(change=None, cached=None, context=None, dockerfile=None, build_args=None, "
        "target=None, strict=False, service=None): fail when a rebuild after `change` misses the layer cache "
        "unexpectedly",
    )
    config.addinivalue_line(
        "markers",
        "dockapp_budget(size=None, layers=None, wasted=None, ready=None, build=None, service=None, "
        "time_on_remote=False): fail when the image or its app is over budget (80MB, 12, 5% or 10MB, 2s, 60s)",
    )
    state = config.stash[STATE] = PluginState(config, resolve(config))
    check_ini_keys(config, state.settings.strict)
    check_values(config, state.settings)
    if state.settings.lint or state.settings.lint_only:
        config.pluginmanager.register(LintCollector(), "dockapp-lint")
    if xdist_loaded(config) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(XdistController(state), "dockapp-xdist-controller")


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints the header (it connects)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.getoption("collectonly") or config.getoption("setupplan", False):
        return
    state = config.stash[STATE]
    if state.settings.lint_only:
        return
    from pytest_dockapp.prestart import Prestart  # threading and pytest only: the library loads if a test needs it

    state.prestart = Prestart.for_items(state, session.items)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    guard = config.stash.get(_GUARD, None)
    if guard is not None:
        guard.reraise()  # a SIGTERM/SIGHUP run ends with that signal, after its teardown


#: A sweep age below this may remove a live run's resources: see :func:`check_values`.
SAFE_SWEEP_AGE = 600.0


def check_values(config: pytest.Config, settings: Settings) -> None:
    """Warn about values that are valid but do something the user may not expect, at the line
    of the ini file (or the command line) that gave them."""
    from pytest_dockapp.core.redact import secret_build_args

    for name, warning in secret_build_args(settings.build_args).items():
        from_cli = name in settings.from_cli.get("build_args", {})
        warn_at_ini(config, warning, "dockapp_build_args", from_cli=from_cli)
    age = settings.sweep_age
    if age is not None and age < SAFE_SWEEP_AGE:
        warn_at_ini(
            config,
            f"dockapp_sweep_age {age:g}s is shorter than {SAFE_SWEEP_AGE / 60:g} minutes: leftovers whose owner "
            "cannot be checked from here (another host, another PID namespace) are removed by age alone, so this "
            "may remove the containers of a run that is still live on another host or in another PID namespace "
            "sharing this engine; use an age longer than your longest session",
            "dockapp_sweep_age",
            from_cli="sweep_age" in settings.from_cli,
        )
