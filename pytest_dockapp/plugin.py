"""pytest glue: options, fixtures, markers and report hooks.

Everything that talks to Docker lives in the library modules; they are imported
lazily so that a pytest run that uses no dockapp fixture pays nothing for them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from .options import BY_NAME, Settings, add_options, resolve
from .signals import TerminationGuard  # standard library only: cheap to load with the plugin

if TYPE_CHECKING:
    from .app import DockApp
    from .build import BuildEvent
    from .cache_check import CacheReport
    from .errors import DockappError
    from .manager import Dockapps, Image


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


class _State:
    """Per-run plugin state: settings, the engine connection, what to report."""

    def __init__(self, config: pytest.Config, settings: Settings):
        self.config = config
        self.settings = settings
        self._apps: Dockapps | None = None
        self.error: DockappError | None = None
        self.kept: list[DockApp] = []
        self.cache_reports: list[tuple[str, CacheReport]] = []
        self.worker_lines: list[str] = []
        self.removed_images: list[str] = []
        self.failed_apps: set[str] = set()  # apps a failing test used: what --dockapp-keep keeps
        self.teardown_error: str | None = None
        self.progress = _Progress(config)

    def apps(self) -> Dockapps:
        """The session's manager; skips (or fails, in strict mode) without an engine."""
        from .errors import DockappError
        from .manager import Dockapps

        if self._apps is None and self.error is None:
            s = self.settings
            try:
                shared = getattr(self.config, "workerinput", {}).get("dockapp_shared_dir")
                self._apps = Dockapps.connect(
                    sweep_age=s.sweep_age,
                    builder=s.builder,
                    docker_cli=s.docker_cli,
                    host_ip=s.host_ip,
                    on_event=self.progress,
                    on_notice=self.progress.notice,
                    shared_dir=Path(shared) if shared else None,
                    reuse_unchanged=not s.rebuild,
                )
                self._apps.sweep_kept = s.sweep_kept
            except DockappError as exc:
                self.error = exc
        if self.error is not None:
            if self.settings.strict:
                pytest.fail(f"{self.error}\n(strict mode: no engine is an error)", pytrace=False)
            pytest.skip(f"pytest-dockapp: {self.error.what} (use --dockapp-strict to make this an error)")
        assert self._apps is not None
        return self._apps

    @property
    def started(self) -> Dockapps | None:
        return self._apps

    def mask(self, text: str) -> str:
        """``text`` with the session's known secret values masked."""
        from .redact import mask_values

        return mask_values(text, self._apps.secrets) if self._apps is not None else text


class _Progress:
    """Live build progress; silent for builds that finish within a second."""

    threshold = 1.0

    def __init__(self, config: pytest.Config):
        self.config = config
        self.shown = False

    def __call__(self, event: BuildEvent) -> None:
        if event.elapsed < self.threshold:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or self.config.getoption("verbose") < 0:
            return
        line = f"dockapp: building [{event.position}] {event.text}"[:120]
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter.isatty():
                reporter.rewrite(line, erase=True)
            else:
                reporter.write_line(line)
        self.shown = True

    def notice(self, message: str) -> None:
        """A line about something that looks wrong while we wait (printed even under -q)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(f"dockapp: {message}")

    def done(self, message: str) -> None:
        if not self.shown:
            return
        self.shown = False
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                if reporter.isatty():
                    reporter.rewrite(message, erase=True)
                reporter.write_line("" if reporter.isatty() else message)


_STATE = pytest.StashKey[_State]()
_ITEM_START = pytest.StashKey[float]()
_ITEM_APPS = pytest.StashKey[list["DockApp"]]()


_GUARD = pytest.StashKey[TerminationGuard]()


def pytest_configure(config: pytest.Config) -> None:
    guard = config.stash[_GUARD] = TerminationGuard()
    guard.install()
    config.addinivalue_line(
        "markers",
        "dockapp_cache(change=None, cached=None, context=None, dockerfile=None, build_args=None, "
        "target=None, strict=False): fail when a rebuild after `change` misses the layer cache unexpectedly",
    )
    state = config.stash[_STATE] = _State(config, resolve(config))
    if config.getoption("dockapp_lint"):
        config.pluginmanager.register(LintCollector(), "dockapp-lint")
    if _xdist_loaded(config) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(XdistController(state), "dockapp-xdist-controller")


def _xdist_loaded(config: pytest.Config) -> bool:
    """Whether pytest-xdist is active, however it was loaded (entry point, ``-p xdist.plugin``):
    by the hook it registers rather than by a plugin name."""
    return hasattr(config.hook, "pytest_configure_node")


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE]


def _fail_on(exc: Exception, state: _State) -> NoReturn:
    """Report a library error as a clean fixture failure: the message is the whole story, with
    known secrets masked (it may quote a container log)."""
    raise pytest.fail.Exception(state.mask(str(exc)), pytrace=False) from None


# -- settings fixtures: override any of them in a conftest.py ------------------------------------


def _setting_fixture(name: str) -> Any:
    def fixture(pytestconfig: pytest.Config) -> Any:
        value = getattr(_state(pytestconfig).settings, name)
        return str(value) if isinstance(value, Path) else dict(value) if isinstance(value, dict) else value

    fixture.__name__ = f"dockapp_{name}"
    fixture.__doc__ = f"{BY_NAME[name].help[0].upper()}{BY_NAME[name].help[1:]} (override it in a conftest.py)."
    return pytest.fixture(scope="session", name=f"dockapp_{name}")(fixture)


# pytest finds fixtures among a plugin module's attributes: one per overridable setting.
for _setting in [s for s in BY_NAME.values() if s.fixture]:
    globals()[f"_fixture_{_setting.name}"] = _setting_fixture(_setting.name)


def _pick(state: _State, name: str, fixture_value: Any) -> Any:
    """The command line wins over a conftest.py fixture override (which wins over the ini file)."""
    return state.settings.from_cli.get(name, fixture_value)


# -- the fixtures users call ---------------------------------------------------------------------


def _build(
    state: _State,
    context: str,
    dockerfile: str | None,
    build_args: Mapping[str, str],
    target: str | None,
    secrets: Mapping[str, str] | None = None,
) -> Image:
    from .errors import DockappError
    from .manager import BuildSpec

    apps = state.apps()
    args = {**build_args, **state.settings.from_cli.get("build_args", {})}
    try:
        image = apps.image(BuildSpec(context, dockerfile, args, target, {**state.settings.secrets, **(secrets or {})}))
    except DockappError as exc:
        state.progress.done("dockapp: build failed")
        _fail_on(exc, state)
    if image.record is not None and not image.record.reused:
        state.progress.done(f"dockapp: built {image.tag} in {image.record.summary()}")
    return image


@pytest.fixture(scope="session")
def dockapp_image(
    pytestconfig: pytest.Config,
    dockapp_context: str,
    dockapp_dockerfile: str | None,
    dockapp_build_args: dict[str, str],
    dockapp_target: str | None,
) -> Image:
    """The session's image: built from the configured Dockerfile, or ``--dockapp-image``."""
    from .errors import DockappError

    state = _state(pytestconfig)
    if state.settings.image:
        try:
            return state.apps().prebuilt(state.settings.image)
        except DockappError as exc:
            _fail_on(exc, state)
    image = _build(
        state,
        _pick(state, "context", dockapp_context),
        _pick(state, "dockerfile", dockapp_dockerfile),
        dockapp_build_args,
        _pick(state, "target", dockapp_target),
    )
    record = image.record
    if state.settings.expect_cached and record is not None and not record.reused and record.misses:
        marks = {s.index: "<-- MISS" for s in record.misses}
        pytest.fail(
            f"--dockapp-expect-cached: the session build of {record.dockerfile} missed the layer cache at "
            f"{len(record.misses)} step(s); the image was expected to come from an earlier build "
            f"(a CI build stage) with the same context, Dockerfile and build args\n\n{record.table(marks)}\n"
            "hint: build with the same builder and settings before the test stage, or drop --dockapp-expect-cached",
            pytrace=False,
        )
    return image


def _start(state: _State, image: Image | str, **kwargs: Any) -> DockApp:
    from .errors import DockappError

    try:
        return state.apps().start(image, **kwargs)
    except DockappError as exc:
        _fail_on(exc, state)


def _start_raising(state: _State, image: Image | str, **kwargs: Any) -> DockApp:
    """As :func:`_start`, but raising the library's error (tests may expect a ``PortError``),
    with known secrets masked in it."""
    from .errors import DockappError

    try:
        return state.apps().start(image, **kwargs)
    except DockappError as exc:
        raise type(exc)(
            state.mask(exc.what), evidence=state.mask(exc.evidence), evidence_title=exc.evidence_title, hint=exc.hint
        ) from None


def _release(state: _State, session: pytest.Session, app: DockApp, scope: str = "session") -> None:
    if state.settings.keep and app.name in state.failed_apps:
        return  # left running on purpose; listed in the terminal summary
    apps = state.started
    if apps is not None and not apps.engine_lost:
        from .engine import engine_phase, is_engine_failure
        from .errors import DockappError

        # Function-scoped apps go in the background: the session's end waits for every removal.
        try:
            with engine_phase(f"removing {app.name}"):
                apps.stop(app, wait=scope == "session")
        except DockappError as exc:
            apps.engine_lost = apps.engine_lost or is_engine_failure(exc.__context__ or exc)
            _fail_on(exc, state)


@pytest.fixture(scope="session")
def dockapp(
    request: pytest.FixtureRequest,
    dockapp_image: Image,
    dockapp_port: str | None,
    dockapp_health_path: str | None,
    dockapp_timeout: float,
) -> Iterator[DockApp]:
    """The app from the configured Dockerfile, running and ready, shared by the session."""
    state = _state(request.config)
    app = _start(
        state,
        dockapp_image,
        port=_pick(state, "port", dockapp_port),
        health_path=_pick(state, "health_path", dockapp_health_path),
        timeout=_pick(state, "timeout", dockapp_timeout),
    )
    yield app
    _release(state, request.session, app)


@pytest.fixture
def dockapp_factory(
    request: pytest.FixtureRequest,
    dockapp_context: str,
    dockapp_dockerfile: str | None,
    dockapp_build_args: dict[str, str],
    dockapp_target: str | None,
    dockapp_port: str | None,
    dockapp_health_path: str | None,
    dockapp_timeout: float,
) -> Iterator[Callable[..., DockApp]]:
    """Build and start more apps with per-call settings; each is removed after the test.

    ``dockapp_factory(context=None, *, dockerfile=None, build_args=None, target=None, image=None,
    port=None, health_path=None, timeout=None, env=None, command=None, network=None, aliases=(),
    host_ports=None, name=None)``. Without ``context`` or ``image`` it uses the session's settings.
    """
    state = _state(request.config)
    started: list[DockApp] = []

    def factory(
        context: str | os.PathLike[str] | None = None,
        *,
        dockerfile: str | None = None,
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        image: str | None = None,
        port: int | str | None = None,
        health_path: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        command: str | Sequence[str] | None = None,
        network: Any = None,
        aliases: Sequence[str] = (),
        host_ports: Mapping[int, int] | None = None,
        name: str | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> DockApp:
        default = context is None and image is None
        ref: Image | str
        if image is not None:
            ref = image
        elif default and dockerfile is None and build_args is None and target is None and secrets is None:
            # The session's image: built from the settings, or the one --dockapp-image names.
            ref = request.getfixturevalue("dockapp_image")
        elif default:
            ref = _build(
                state,
                _pick(state, "context", dockapp_context),
                dockerfile or _pick(state, "dockerfile", dockapp_dockerfile),
                {**dockapp_build_args, **(build_args or {})},
                target or _pick(state, "target", dockapp_target),
                secrets,
            )
        else:
            ctx = Path(context)  # type: ignore[arg-type]
            ref = _build(
                state,
                str(ctx if ctx.is_absolute() else request.config.rootpath / ctx),  # one base: the rootdir
                dockerfile,
                dict(build_args or {}),
                target,
                secrets,
            )
        app = _start_raising(
            state,
            ref,
            port=port if port is not None else (_pick(state, "port", dockapp_port) if default else None),
            health_path=health_path
            if health_path is not None
            else (_pick(state, "health_path", dockapp_health_path) if default else None),
            timeout=timeout or _pick(state, "timeout", dockapp_timeout),
            env=env,
            command=command,
            network=network,
            aliases=aliases,
            host_ports=host_ports,
            name=name,
        )
        started.append(app)
        request.node.stash.setdefault(_ITEM_APPS, []).append(app)
        return app

    yield factory
    for app in started:
        _release(state, request.session, app, scope="function")


@pytest.fixture
def dockapp_network(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh Docker network as a testcontainers ``Network``, removed after the test.

    Pass it to ``dockapp_factory(network=..., aliases=[...])`` and to testcontainers'
    ``DockerContainer(...).with_network(...)`` to put both on one network. Unless you
    configured testcontainers yourself, Ryuk is disabled when its image is not on the
    engine, and published ports are reached through the Docker host.
    """
    from .interop import create_network, remove_network

    apps = _state(request.config).apps()
    network = create_network(apps.client, apps.session)
    yield network
    remove_network(apps.client, network.id)


# -- the cache-regression marker ----------------------------------------------------------------

_MARKER_KEYS = ("change", "cached", "context", "dockerfile", "build_args", "target", "strict")
_CACHE_REPORT = pytest.StashKey["CacheReport"]()


@pytest.fixture
def dockapp_cache_report(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    dockapp_context: str,
    dockapp_dockerfile: str | None,
    dockapp_build_args: dict[str, str],
    dockapp_target: str | None,
) -> CacheReport:
    """The ``dockapp_cache`` marker's report: both builds, hits, misses, the verdict."""
    from .cache_check import check_cache
    from .errors import DockappError

    marker = request.node.get_closest_marker("dockapp_cache")
    if marker is None:
        raise pytest.UsageError("dockapp_cache_report needs the test to carry @pytest.mark.dockapp_cache(...)")
    unknown = sorted(set(marker.kwargs) - set(_MARKER_KEYS))
    if marker.args or unknown:
        pytest.fail(
            f"dockapp_cache marker on {request.node.nodeid}: "
            + (f"unknown keyword(s) {', '.join(unknown)}" if unknown else "takes keywords only")
            + f"; valid keywords: {', '.join(_MARKER_KEYS)}",
            pytrace=False,
        )
    kw = marker.kwargs
    state = _state(request.config)
    apps = state.apps()
    context = kw.get("context") or _pick(state, "context", dockapp_context)
    ctx = Path(context)
    if not ctx.is_absolute():
        ctx = request.config.rootpath / ctx  # one base for relative paths: the rootdir
    default = kw.get("context") is None
    # marker arguments over the command line over the fixture (and the ini file): as everywhere
    cli_args = state.settings.from_cli.get("build_args", {})
    args = {**(dockapp_build_args if default else {}), **cli_args, **(kw.get("build_args") or {})}
    apps.start_sweep()
    try:
        report = check_cache(
            apps.client,
            ctx,
            kw.get("dockerfile") or (_pick(state, "dockerfile", dockapp_dockerfile) if default else None),
            builder=apps.builder,
            change=kw.get("change"),
            cached=kw.get("cached") or (),
            build_args=args,
            target=kw.get("target") or (_pick(state, "target", dockapp_target) if default else None),
            strict=bool(kw.get("strict", False)),
            session=apps.session,
            workdir=tmp_path_factory.getbasetemp(),
        )
    except DockappError as exc:
        _fail_on(exc, state)
    state.cache_reports.append((request.node.nodeid, report))
    request.node.stash[_CACHE_REPORT] = report
    return report


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names: list[str] | None = getattr(item, "fixturenames", None)
        if names is not None and item.get_closest_marker("dockapp_cache") and "dockapp_cache_report" not in names:
            names.append("dockapp_cache_report")
    if config.getoption("dockapp_lint"):
        settings = _state(config).settings
        path = (settings.context / (settings.dockerfile or "Dockerfile")).resolve()
        if path.is_file() and not any(getattr(i, "path", None) == path for i in items):
            items.append(DockerfileLintItem.from_parent(session, name=f"{path.name}::dockapp-lint", path=path))


class LintCollector:
    """Registered only under ``--dockapp-lint``: a hook per collected file costs time on big trees."""

    @staticmethod
    def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        name = file_path.name
        if name == "Dockerfile" or name.startswith("Dockerfile.") or name.endswith(".Dockerfile"):
            return DockerfileLintFile.from_parent(parent, path=file_path)
        return None


class DockerfileLintItem(pytest.Item):
    """One Dockerfile checked for cache-hostile layer order (``--dockapp-lint``)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Some plugins read item.funcargs on every item (pytest-docker-tools does); give them one.
        self.funcargs: dict[str, Any] = {}

    def runtest(self) -> None:
        from .dockerfile import Dockerfile
        from .lint import lint

        findings = lint(Dockerfile.read(self.path))
        if findings:
            raise _LintFailure("\n".join(str(f) for f in findings))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, _LintFailure):
            return str(excinfo.value)
        return str(excinfo.getrepr(style="short"))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"dockapp-lint {self.path.name}"


class _LintFailure(Exception):
    """A lint item's findings; the message is the report."""


class DockerfileLintFile(pytest.File):
    """A Dockerfile collected under ``--dockapp-lint``."""

    def collect(self) -> list[pytest.Item]:
        return [DockerfileLintItem.from_parent(self, name="dockapp-lint")]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    report = item.stash.get(_CACHE_REPORT, None)
    if report is not None and not report.ok:
        pytest.fail(report.explain(), pytrace=False)


# -- reporting -----------------------------------------------------------------------------------


def _uses_dockapp(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n.startswith("dockapp") for n in names) or item.get_closest_marker("dockapp_cache") is not None


def pytest_report_collectionfinish(config: pytest.Config, items: Sequence[pytest.Item]) -> list[str]:
    if not any(_uses_dockapp(item) for item in items):
        return []
    state = _state(config)
    try:
        apps = state.apps()
    except (pytest.skip.Exception, pytest.fail.Exception):
        return [f"dockapp: no engine ({state.error.what if state.error else 'unreachable'})"]
    from .engine import engine_version
    from .errors import DockappError

    try:
        builder = apps.builder.describe()
    except DockappError as exc:
        builder = f"unavailable ({exc.what})"
    lines = [f"dockapp: engine {engine_version(apps.client)}, builder {builder}"]
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_ITEM_START] = time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        apps: list[DockApp] = item.stash.get(_ITEM_APPS, [])
        funcargs = getattr(item, "funcargs", {})
        from_fixtures = [v for v in funcargs.values() if type(v).__name__ == "DockApp"]
        since = item.stash.get(_ITEM_START, None)
        state = _state(item.config)
        state.failed_apps.update(a.name for a in from_fixtures + apps)
        from .errors import cap

        engine_lost = state.started is not None and state.started.engine_lost
        for app in from_fixtures + [a for a in apps if a not in from_fixtures]:
            if engine_lost:
                report.sections.append((f"dockapp logs: {app.name}", "(not read: the engine stopped answering)"))
                continue
            try:
                text = app.logs(tail=200, since=since)
            except Exception as exc:  # the container may be gone; say so instead of failing the report
                text = f"(no logs: {exc})"
            text = state.mask(cap(text)) or "(empty)"
            died = app.exit_status()
            if died is not None:
                # First among the dockapp sections: the client's "connection refused" above is
                # only the symptom.
                first = next((i for i, (title, _) in enumerate(report.sections) if title.startswith("dockapp")), None)
                section = (f"dockapp: {app.name} is no longer running: {died}", "\n".join(text.splitlines()[-30:]))
                report.sections.insert(len(report.sections) if first is None else first, section)
            report.sections.append((f"dockapp logs: {app.name} (since this test started)", text))
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = _state(config)
    apps = state.started
    if apps is not None:
        try:
            state.kept = apps.close(keep=state.failed_apps if state.settings.keep else ())
            if state.settings.remove_images:
                state.removed_images = apps.remove_built_images()
        except Exception as exc:  # the session's end never raises: it says what may be left
            state.teardown_error = state.mask(str(exc)).splitlines()[0]
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["dockapp_summary"] = _summary_lines(state)


def _summary_lines(state: _State) -> list[str]:
    apps = state.started
    if apps is None:
        return []
    lines = []
    for image in apps.prebuilt_images:
        lines.append(f"testing prebuilt image {image.tag} ({image.id.split(':')[-1][:12]}): not built")
    for record in apps.builds:
        if record.reused:
            built_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.built_at))
            lines.append(
                f"reused {record.tag}: nothing it is built from changed since its last build "
                f"(checked in {record.reuse_seconds or 0:.2f}s; --dockapp-rebuild builds anyway); "
                f"step record from that build at {built_at}: {record.summary()}"
            )
        else:
            lines.append(f"built {record.tag} ({record.builder}) in {record.summary()}")
    for image in apps.shared_images:
        lines.append(f"reused {image.tag}: built once by another pytest-xdist worker")
    for stat in apps.apps:
        down = f", removed in {stat.teardown_seconds:.2f}s" if stat.teardown_seconds is not None else ""
        lines.append(f"{stat.name}: ready in {stat.ready_seconds:.2f}s ({stat.checks}){down}")
    for nodeid, report in state.cache_reports:
        lines.append(
            f"cache check {nodeid}: warm build {report.warm.seconds:.2f}s, "
            f"rebuild {report.rebuild.summary()}: {report.summary()}"
        )
    lines += state.removed_images
    if state.teardown_error is not None:
        lines.append(f"teardown failed: {state.teardown_error}")
    if apps.left_behind:
        names = " ".join(apps.left_behind)
        lines.append(
            f"may be left on the engine: {names}; once it answers again, remove them with: docker rm -f {names}"
        )
    for app in state.kept:
        lines.append(f"kept {app.name} at {app.url if app.port else '(no port)'}; remove: docker rm -f {app.name}")
    swept = apps.sweep_report
    if swept is not None and swept.total:
        lines.append(
            f"swept leftovers of killed sessions: {len(swept.containers)} containers, {len(swept.networks)} "
            f"networks, {len(swept.volumes)} volumes, {len(swept.images)} images"
            + (f", {len(swept.leases)} image leases" if swept.leases else "")
        )
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = _state(terminalreporter.config)
    lines = _summary_lines(state) + state.worker_lines
    if lines:
        terminalreporter.write_sep("-", "dockapp")
        for line in lines:
            terminalreporter.write_line(line)


class XdistController:
    """On the pytest-xdist controller: one shared build folder for all workers, one summary."""

    def __init__(self, state: _State):
        import tempfile

        self.state = state
        self.shared_dir = tempfile.mkdtemp(prefix="dockapp-xdist-")
        self.crashed = False

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dockapp_shared_dir"] = self.shared_dir

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = node.gateway.id
        self.state.worker_lines += [f"[{worker}] {line}" for line in output.get("dockapp_summary", [])]
        self.crashed = self.crashed or error is not None

    def pytest_sessionfinish(self) -> None:
        # A crashed worker ran no teardown: its pid is gone now, so the sweep takes what it left.
        # Workers that finished cleaned up after themselves: no need to make the run wait.
        if self.crashed:
            from . import cleanup
            from .engine import connect
            from .errors import DockappError

            age = self.state.settings.sweep_age
            if age is None:
                return  # --dockapp-sweep-age off: the user asked for no sweep at all
            with contextlib.suppress(DockappError):
                cleanup.sweep(connect(), cleanup.Session(), age, kept=self.state.settings.sweep_kept)

    def pytest_unconfigure(self) -> None:
        import shutil

        shutil.rmtree(self.shared_dir, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    guard = config.stash.get(_GUARD, None)
    if guard is not None:
        guard.reraise()  # a SIGTERM/SIGHUP run ends with that signal, after its teardown
