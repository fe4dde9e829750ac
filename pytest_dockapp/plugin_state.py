"""The pytest layer's per-run state, shared by its modules: settings, the engine connection,
what to report, and the helpers every fixture uses."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pytest

from pytest_dockapp.options import Settings
from pytest_dockapp.progress import Progress

if TYPE_CHECKING:
    from pytest_dockapp.appcov.collect import AppCoverage
    from pytest_dockapp.budgets.check import Figures
    from pytest_dockapp.cache.check import CacheReport
    from pytest_dockapp.core.errors import DockappError
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.manager import AppManager, BuildSpec, Image
    from pytest_dockapp.run.options import AppOptions, SessionOptions
    from pytest_dockapp.services.compose import Project
    from pytest_dockapp.services.reuse import Reuse
    from pytest_dockapp.services.stack import Stack
    from pytest_dockapp.services.state import ServiceState, StackState


class EarlyStart(Protocol):
    """What the session needs of :class:`~pytest_dockapp.prestart.Prestart` (a protocol, so that
    the two modules do not import each other)."""

    def wait(self) -> None: ...

    def cancel(self) -> None: ...

    def take_image(self, spec: BuildSpec | None) -> Image | None: ...

    def take_app(self, image: Image | str, options: AppOptions) -> DockApp | None: ...


class PluginState:
    """Per-run plugin state: settings, the engine connection, what to report."""

    def __init__(self, config: pytest.Config, settings: Settings):
        self.config = config
        self.settings = settings
        self._apps: AppManager | None = None
        self.error: DockappError | None = None
        self.kept: list[DockApp] = []
        self.cache_reports: list[tuple[str, CacheReport]] = []
        self.stacks: list[Stack] = []  # the compose stacks the session started
        self.figures: dict[str, Figures] = {}  # what budgets measured, by image ID
        self.worker_lines: list[str] = []
        self.worker_summary: list[str] = []  # the workers' summaries, merged (distributed.merge_summaries)
        self.removed_images: list[str] = []
        self._clean_lines: list[str] = []  # what dockapp_clean's restores took, one line per stack
        self._clean: tuple[StackState, Stack] | None = None  # the session stack's snapshot, once taken
        self._kept_data: list[tuple[str, Stack, ServiceState, str]] = []  # (test, stack, service, database)
        self.failed_apps: set[str] = set()  # apps a failing test used: what --dockapp-keep keeps
        self.teardown_error: str | None = None
        self.progress = Progress(config)
        self.prestart: EarlyStart | None = None  # the session image and app, started at collection
        #: The session's compose files, once a fixture resolved them: a factory or fresh stack of
        #: these files takes the session's settings (and its --dockapp-image).
        self.session_compose: list[str] | None = None
        self._connecting = threading.Lock()
        self._noticed: set[str] = set()
        self._reuse: Reuse | None = None
        self.coverage: AppCoverage | None = None  # with --dockapp-cov, once connected

    def reuse_status(self) -> tuple[bool, str]:
        """Whether the session's app or stack is reused across runs, and the line that says so."""
        mode = self.settings.reuse
        if not mode:
            return False, ""
        # Only here: the reuse module pulls in the whole services layer (compose, stacks, the
        # clean-state kinds), 20-40 ms of imports that a run without reuse never needs.
        from pytest_dockapp.services.reuse import CI_VARIABLES, ci_variable

        ci = ci_variable()
        if ci is not None and mode != "force":
            return False, (
                f"dockapp reuse: off, because {ci} is set (read as CI: {', '.join(CI_VARIABLES)}); "
                "DOCKAPP_REUSE=force keeps it on"
            )
        if self.settings.cov:
            return False, "dockapp reuse: off with --dockapp-cov (each run measures the apps it starts)"
        if getattr(self.config, "workerinput", None) is not None and self.settings.compose_scope == "session":
            return (
                False,
                "dockapp reuse: off for the stack all pytest-xdist workers share (dockapp_compose_scope = session)",
            )
        ttl = self.settings.reuse_ttl
        idle = "never swept" if ttl is None else f"swept once unused for {ttl / 3600:.3g} h"
        return True, (
            f"dockapp reuse: on; the session's app or stack stays running for the next run ({idle}; "
            "pytest --dockapp-down removes it)"
        )

    def reuse(self) -> Reuse | None:
        """The session's reuse across runs; None when off."""
        if not self.reuse_status()[0]:
            return None
        if self._reuse is None:
            from pytest_dockapp.services.reuse import Reuse

            worker = getattr(self.config, "workerinput", {}).get("workerid", "")
            self._reuse = Reuse(self.apps(), self.config.rootpath, worker)
        return self._reuse

    def close_reuse(self) -> None:
        """Let the reused slots go; what they run stays up."""
        if self._reuse is not None:
            self._reuse.close()

    def take_coverage(self, data: dict[str, Any] | None) -> None:
        """A pytest-xdist worker's app coverage (:meth:`AppCoverage.to_json`), added to the run's."""
        if not data:
            return
        if self.coverage is None:
            from pytest_dockapp.appcov.collect import AppCoverage

            self.coverage = AppCoverage()
        self.coverage.merge(data)

    def coverage_of_shared(self) -> AppCoverage | None:
        """On the pytest-xdist controller: the run's app coverage, to which the stack the workers
        shared adds its own before it is removed (None: coverage is off)."""
        if self.coverage is None and self.settings.cov is not False:
            plugin = self.config.pluginmanager.get_plugin("_cov")
            if self.settings.cov or plugin is not None:
                from pytest_dockapp.appcov.collect import AppCoverage, CoverageOptions

                self.coverage = AppCoverage(CoverageOptions(strict=False))
        return self.coverage

    @property
    def reuse_lines(self) -> list[str]:
        """What reuse across runs did, for the summary."""
        return list(self._reuse.lines) if self._reuse is not None else []

    def watch_clean_state(self, snapshot: StackState, stack: Stack) -> None:
        """The session stack's snapshot, so that a failing test's data can be kept (``--dockapp-keep``)."""
        self._clean = (snapshot, stack)

    def keep_clean_data(self, nodeid: str) -> None:
        """``--dockapp-keep``: what the failing test ``nodeid`` left in its databases is kept
        under new names (the next test gets the seed), and its stack left running at the end."""
        if self._clean is None:
            return
        from pytest_dockapp.core.errors import DockappError

        snapshot, stack = self._clean
        try:
            kept = snapshot.keep()
        except DockappError as exc:
            self._clean_lines.append(f"the databases {nodeid} wrote could not be kept: {exc.what}")
            return
        self._kept_data += [(nodeid, stack, service, database) for service, database in kept]

    def leave_failed(self, stack: Stack) -> bool:
        """``--dockapp-keep``: a test's own stack that a failing test used stays running, renamed
        ``*-kept`` at the end with the session's kept apps; False (nothing done) otherwise."""
        if not self.settings.keep or not any(app.name in self.failed_apps for app in stack.services.values()):
            return False
        self.failed_apps.update(app.name for app in stack.leave())
        return True

    def keeps(self, stack: Stack) -> bool:
        """Whether a failing test's data was kept in ``stack``: it stays running at the end."""
        return any(kept is stack for _, kept, _, _ in self._kept_data)

    def kept_data_lines(self) -> list[str]:
        """Where each kept database is, and the command that connects to it."""
        return [
            f"kept the database {nodeid} left: {database} in {stack[service.name].name}; "
            f"connect: {service.command(stack[service.name].name, database)}"
            for nodeid, stack, service, database in self._kept_data
        ]

    def add_clean_line(self, line: str) -> None:
        """A line for the terminal summary about a stack's clean-state restores."""
        self._clean_lines.append(line)

    @property
    def clean_lines(self) -> list[str]:
        return list(self._clean_lines)

    def notice_once(self, message: str) -> None:
        """A notice line, said once per run however often its cause comes back."""
        if message not in self._noticed:
            self._noticed.add(message)
            self.progress.notice(message)

    def apps(self) -> AppManager:
        """The session's manager; skips (or fails, in strict mode) without an engine. Waits for
        the early start first: the manager is not shared between threads."""
        __tracebackhide__ = True
        if self.prestart is not None and threading.current_thread() is threading.main_thread():
            self.prestart.wait()
        self.connect()
        if self.error is not None:
            from pytest_dockapp.core.errors import EngineUnavailableError

            if not isinstance(self.error, EngineUnavailableError):  # a wrong setting is never "no engine"
                fail_on(self.error, self)
            if self.settings.strict:
                pytest.fail(f"{self.error}\n(strict mode: no engine is an error)", pytrace=False)
            # Reported at the test, not here (trust III, 18): pytest's own skip marks do the same.
            raise pytest.skip.Exception(
                f"pytest-dockapp: {self.error.what} (use --dockapp-strict to make this an error)",
                _use_item_location=True,
            )
        assert self._apps is not None
        return self._apps

    def connect(self) -> None:
        """Connect once (from the main thread or the prestart's); a failure is kept in :attr:`error`."""
        from pytest_dockapp.core.errors import DockappError
        from pytest_dockapp.run.manager import AppManager

        with self._connecting:
            if self._apps is not None or self.error is not None:
                return
            try:
                self._apps = AppManager.connect(
                    self.session_options(), on_event=self.progress, on_notice=self.progress.notice
                )
                s = self.settings
                self._apps.settings(sweep_kept=s.sweep_kept, warned_args=s.build_args)  # warned at configure
                self._watch_coverage(self._apps)
            except DockappError as exc:
                self.error = exc

    def _watch_coverage(self, apps: AppManager) -> None:
        """``--dockapp-cov``, or pytest-cov's ``--cov`` unless turned off: the apps' own code is
        measured, and with pytest-cov, its data goes where pytest-cov combines its own."""
        plugin = self.config.pluginmanager.get_plugin("_cov")
        controller = getattr(plugin, "cov_controller", None) if plugin is not None else None
        cov = getattr(controller, "cov", None)
        if self.settings.cov is False or (self.settings.cov is None and cov is None):
            return
        from pytest_dockapp.appcov.collect import AppCoverage, CoverageOptions

        data = os.path.abspath(cov.config.data_file) if cov is not None else None
        branch = bool(cov.config.branch) if cov is not None else False
        self.coverage = AppCoverage(CoverageOptions(self.settings.cov is True, data, branch))
        apps.watch(self.coverage)

    def session_options(self) -> SessionOptions:
        """The session's side of every build and app, from the settings."""
        from pytest_dockapp.builds.pipeline import BuildPolicy
        from pytest_dockapp.builds.registry import RegistryCache
        from pytest_dockapp.run.options import SessionOptions

        s = self.settings
        shared = getattr(self.config, "workerinput", {}).get("dockapp_shared_dir")
        return SessionOptions(
            builder=s.builder,
            docker_cli=s.docker_cli,
            host_ip=s.host_ip,
            connect_host=s.connect_host,
            ready=s.ready,
            spares=s.spares,
            sweep_age=s.sweep_age,
            reuse_ttl=s.reuse_ttl,
            shared_dir=Path(shared) if shared else None,
            builds=BuildPolicy(not s.rebuild, RegistryCache(tuple(s.cache_from), s.cache_to)),
        )

    @property
    def started(self) -> AppManager | None:
        return self._apps

    def mask(self, text: str) -> str:
        """``text`` with the session's known secret values masked."""
        from pytest_dockapp.core.redact import mask_values

        return mask_values(text, self._apps.secrets) if self._apps is not None else text


STATE = pytest.StashKey[PluginState]()
ITEM_START = pytest.StashKey[float]()
#: The factory's apps of a test, by a name stable across runs: its ``name=``, else ``factory-<n>``.
ITEM_APPS = pytest.StashKey[dict[str, "DockApp"]]()


def state_of(config: pytest.Config) -> PluginState:
    return config.stash[STATE]


def fail_on(exc: Exception, state: PluginState) -> NoReturn:
    """Report a library error as a clean fixture failure: the message is the whole story, with
    known secrets masked (it may quote a container log)."""
    __tracebackhide__ = True
    raise pytest.fail.Exception(state.mask(str(exc)), pytrace=False) from None


@contextlib.contextmanager
def told_once(what: str) -> Iterator[None]:
    """Marks the failure of a session fixture as ``what``: pytest raises that one failure again in
    every test that asks for the fixture, and reporting says it in full once, then refers to it."""
    __tracebackhide__ = True
    try:
        yield
    except pytest.fail.Exception as exc:
        exc.dockapp_once = what  # type: ignore[attr-defined]
        raise


def pick(state: PluginState, name: str, fixture_value: Any, call: Any = None) -> Any:
    """The setting ``name`` by :meth:`Settings.effective`: a call's argument, the command line,
    the environment, the conftest.py fixture (the ini file, the default)."""
    return state.settings.effective(name, call=call, fixture=fixture_value)


def load_compose(state: PluginState, files: str | list[str], wanted: str | None) -> Project:
    """The session's compose project as the stack and the cache marker both see it: files from
    the rootdir, the enabled profiles (and ``wanted``), and the command line's build args on top
    of each service's."""
    from pytest_dockapp.services.compose import load_project

    s = state.settings
    paths = [state.config.rootpath / f for f in ([files] if isinstance(files, str) else files)]
    project = load_project(paths, profiles=s.compose_profiles, wanted=wanted, ignore=s.compose_ignore)
    notice = project.notice()
    if notice:
        state.notice_once(notice)
    for svc in project.services.values():
        if svc.build is not None:  # the command line's build args win, as for the Dockerfile alone
            svc.build.args.update(s.from_cli.get("build_args", {}))
    return project
