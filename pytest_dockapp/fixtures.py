"""The fixtures: the settings a conftest.py may override, the image, the app, the factory and a
network; each is a thin layer over the library's :class:`~pytest_dockapp.run.manager.AppManager`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import pytest

from pytest_dockapp.options import BY_NAME
from pytest_dockapp.plugin_state import ITEM_APPS, PluginState, fail_on, load_compose, pick, state_of, told_once

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.manager import Image
    from pytest_dockapp.run.options import AppOptions
    from pytest_dockapp.services.reuse import Reuse
    from pytest_dockapp.services.stack import Stack


class FactoryCall(TypedDict, total=False):
    """What one ``dockapp_factory(context, **call)`` may set: a build, or a prebuilt ``image``;
    what the app is asked (port, readiness, env...); or a test's own ``compose`` stack."""

    dockerfile: str | None
    build_args: Mapping[str, str] | None
    target: str | None
    secrets: Mapping[str, str] | None
    image: str | None
    port: int | str | None
    health_path: str | None
    timeout: float | None
    ready: str | None
    env: Mapping[str, str] | None
    command: str | Sequence[str] | None
    network: Any
    aliases: Sequence[str]
    host_ports: Mapping[int, int] | None
    name: str | None
    compose: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
    service: str | None


# -- settings fixtures: override any of them in a conftest.py ------------------------------------


def _setting_fixture(name: str) -> Any:
    def fixture(pytestconfig: pytest.Config) -> Any:
        value = getattr(state_of(pytestconfig).settings, name)
        return str(value) if isinstance(value, Path) else dict(value) if isinstance(value, dict) else value

    fixture.__name__ = f"dockapp_{name}"
    fixture.__doc__ = f"{BY_NAME[name].help[0].upper()}{BY_NAME[name].help[1:]} (override it in a conftest.py)."
    return pytest.fixture(scope="session", name=f"dockapp_{name}")(fixture)


# pytest finds fixtures among a plugin module's attributes: one per overridable setting.
for _setting in [s for s in BY_NAME.values() if s.fixture]:
    globals()[f"_fixture_{_setting.name}"] = _setting_fixture(_setting.name)


# -- the fixtures users call ---------------------------------------------------------------------


def _build(
    state: PluginState,
    context: str,
    dockerfile: str | None,
    base_args: Mapping[str, str],
    target: str | None,
    secrets: Mapping[str, str] | None = None,
    call_args: Mapping[str, str] | None = None,
) -> Image:
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError
    from pytest_dockapp.run.manager import BuildSpec

    args = pick(state, "build_args", base_args, call_args)  # the call's, the command line's, the fixture's
    spec = BuildSpec(context, dockerfile, args, target, {**state.settings.secrets, **(secrets or {})})
    try:
        early = state.prestart.take_image(spec) if state.prestart is not None else None
        image = early or state.apps().image(spec)
    except DockappError as exc:
        state.progress.done("dockapp: build failed")
        fail_on(exc, state)
    except BaseException:
        state.progress.done("dockapp: build interrupted")
        raise
    state.progress.done(f"dockapp: built {image.tag} in {image.record.summary()}" if image.record else "")
    if image.record is not None:
        state.config.hook.pytest_dockapp_build_finished(config=state.config, record=image.record)
    return image


@pytest.fixture(scope="session")
def dockapp_image(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    dockapp_context: str,
    dockapp_dockerfile: str | None,
    dockapp_build_args: dict[str, str],
    dockapp_target: str | None,
    dockapp_compose: list[str] | str,
) -> Image:
    """The session's image: built from the configured Dockerfile, or ``--dockapp-image``; with
    ``dockapp_compose``, the image of the app's service."""
    __tracebackhide__ = True
    state = state_of(pytestconfig)
    from pytest_dockapp.marker import session_budget  # a plugin module: imported here once pytest has

    if dockapp_compose:  # with --dockapp-image too: the stack's app service runs it
        stack = request.getfixturevalue("dockapp_services")
        image: Image = stack.images[stack.main_name]
    else:
        with told_once("the session build"):
            image = _session_image(state, dockapp_context, dockapp_dockerfile, dockapp_build_args, dockapp_target)
    with told_once("the session image's budget"):
        session_budget(state, image, ("size", "layers", "wasted", "build"))
    return image


def _session_image(
    state: PluginState, context: str, dockerfile: str | None, build_args: dict[str, str], target: str | None
) -> Image:
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    if state.settings.image:
        try:
            early = state.prestart.take_image(None) if state.prestart is not None else None
            return early or state.apps().prebuilt(state.settings.image)
        except DockappError as exc:
            fail_on(exc, state)
    image = _build(
        state,
        pick(state, "context", context),
        pick(state, "dockerfile", dockerfile),
        build_args,
        pick(state, "target", target),
    )
    record = image.record
    if state.settings.expect_cached and record is not None:
        from pytest_dockapp.core.errors import CacheRegressionError

        try:
            record.assert_fully_cached()
        except CacheRegressionError as exc:
            fail_on(exc, state)
    return image


def _start(state: PluginState, image: Image | str, options: AppOptions) -> DockApp:
    """Start an app; a library error becomes a clean fixture failure."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    try:
        return _start_raising(state, image, options)
    except DockappError as exc:
        fail_on(exc, state)


def _start_raising(
    state: PluginState, image: Image | str, options: AppOptions, fresh: bool = False, likely: bool = False
) -> DockApp:
    """As :func:`_start`, but raising the library's error (tests may expect a ``PortError``),
    with known secrets masked in it. A ``fresh`` app (one test's) may come from a warm spare."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    try:
        early = state.prestart.take_app(image, options) if state.prestart is not None and not fresh else None
        apps = state.apps()
        app = early or (apps.start_fresh(image, options, likely=likely) if fresh else apps.start(image, options))
    except DockappError as exc:
        raise type(exc)(
            state.mask(exc.what), evidence=state.mask(exc.evidence), evidence_title=exc.evidence_title, hint=exc.hint
        ) from None
    try:
        state.config.hook.pytest_dockapp_app_ready(config=state.config, app=app)
    except BaseException:
        apps.stop(app)
        raise
    return app


def _reused(state: PluginState, reuse: Reuse, image: Image, options: AppOptions) -> DockApp:
    """The session app the last run left running, or one started to be left for the next."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    try:
        app = reuse.app(image, options)
    except DockappError as exc:
        fail_on(exc, state)
    state.config.hook.pytest_dockapp_app_ready(config=state.config, app=app)
    return app


def _release(state: PluginState, session: pytest.Session, app: DockApp, scope: str = "session") -> None:
    if state.settings.keep and app.name in state.failed_apps:
        return  # left running on purpose; listed in the terminal summary
    apps = state.started
    if apps is not None and not apps.engine_lost:
        from pytest_dockapp.core.errors import DockappError
        from pytest_dockapp.engine.client import engine_phase, is_engine_failure

        # Function-scoped apps go in the background: the session's end waits for every removal.
        try:
            with engine_phase(f"removing {app.name}", apps.endpoint):
                apps.stop(app, wait=scope == "session")
        except DockappError as exc:
            if is_engine_failure(exc.__context__ or exc):
                apps.lose_engine()
            fail_on(exc, state)


@pytest.fixture(scope="session")
def dockapp(
    request: pytest.FixtureRequest,
    dockapp_image: Image,
    dockapp_port: str | None,
    dockapp_health_path: str | None,
    dockapp_timeout: float,
    dockapp_ready: str,
) -> Iterator[DockApp]:
    """The app from the configured Dockerfile, running and ready, shared by the session."""
    __tracebackhide__ = True
    state = state_of(request.config)
    from pytest_dockapp.run.options import AppOptions

    options = AppOptions.of(
        port=pick(state, "port", dockapp_port),
        health_path=pick(state, "health_path", dockapp_health_path),
        timeout=pick(state, "timeout", dockapp_timeout),
        ready=pick(state, "ready", dockapp_ready),
    )
    from pytest_dockapp.marker import session_budget

    if request.getfixturevalue("dockapp_compose"):
        main = request.getfixturevalue("dockapp_services").main
        with told_once("the session app's budget"):
            session_budget(state, dockapp_image, ("ready",))
        yield main  # the stack fixture removes it
        return
    reuse = state.reuse()
    with told_once("the session app"):
        app = _start(state, dockapp_image, options) if reuse is None else _reused(state, reuse, dockapp_image, options)
    try:
        with told_once("the session app's budget"):
            session_budget(state, dockapp_image, ("ready",))
    except BaseException:
        _release(state, request.session, app)
        raise
    yield app
    _release(state, request.session, app)


# -- services from a compose file ----------------------------------------------------------------


@pytest.fixture(scope="session")
def dockapp_services(
    request: pytest.FixtureRequest,
    dockapp_compose: list[str] | str,
    dockapp_service: str | None,
    dockapp_port: str | None,
    dockapp_health_path: str | None,
    dockapp_timeout: float,
    dockapp_ready: str,
) -> Iterator[Stack]:
    """Every running service of the ``dockapp_compose`` stack by name, each a ready app (the
    ``dockapp`` fixture is its app's service); the stack is removed when the session ends."""
    __tracebackhide__ = True
    state = state_of(request.config)
    files = pick(state, "compose", dockapp_compose)
    if not files:
        pytest.fail("dockapp_services needs a compose file: set dockapp_compose = compose.yaml", pytrace=False)
    state.session_compose = _as_list(files)
    main_options = {
        "port": pick(state, "port", dockapp_port),
        "health_path": pick(state, "health_path", dockapp_health_path),
        "ready": pick(state, "ready", dockapp_ready),
    }
    with told_once("the session stack"):
        timeout = pick(state, "timeout", dockapp_timeout)
        # a reused stack is put back as it started when the session seeds it (dockapp_clean)
        seeds = any("dockapp_clean" in getattr(i, "fixturenames", ()) for i in request.session.items)
        stack = _stack(state, files, pick(state, "service", dockapp_service), main_options, timeout, True, seeds=seeds)
    yield stack
    if state.keeps(stack):  # --dockapp-keep kept a failing test's database in it: it stays, renamed *-kept
        state.failed_apps.update(app.name for app in stack.leave())
        return
    _close_stack(state, stack)


def _as_list(files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    return [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]


def _close_stack(state: PluginState, stack: Stack, wait: bool = True) -> None:
    if state.started is not None and not state.started.engine_lost:
        from pytest_dockapp.core.errors import DockappError

        try:
            stack.close(wait)
        except DockappError as exc:
            fail_on(exc, state)


def _stack(
    state: PluginState,
    files: list[str] | str,
    service: str | None,
    main_options: dict[str, Any],
    timeout: float,
    shared: bool = False,
    fresh: bool = False,
    likely: bool = False,
    seeds: bool = False,
) -> Stack:
    """Load, build and start a stack (``shared``: the one all pytest-xdist workers share, under
    ``dockapp_compose_scope = session``; ``fresh``: one test's, maybe a warm spare); a library
    error becomes a clean fixture failure."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError
    from pytest_dockapp.services.compose import with_image
    from pytest_dockapp.services.stack import Stack

    s = state.settings
    try:
        project = load_compose(state, files, service)
        if s.image and _as_list(files) == state.session_compose:  # the session's stack: its app is the prebuilt image
            service = project.main_service(service)
            project = with_image(project, service, s.image, "--dockapp-image")
        workerinput = getattr(state.config, "workerinput", None)
        if shared and workerinput is not None and s.compose_scope == "session":
            stack = _shared_stack(state, project, workerinput, service, main_options, timeout)
            state.stacks.append(stack)
            _check_builds(state, stack)
        else:
            stack = Stack(
                state.apps(),
                project,
                main=service,
                host_ports=s.compose_host_ports,
                main_options=main_options,
                timeout=timeout,
            )
            state.stacks.append(stack)
            reuse = state.reuse() if shared else None
            if reuse is None:
                _check_builds(state, stack)
            if fresh:
                state.stacks[-1] = stack = stack.start_fresh(likely)
            elif reuse is not None:
                state.stacks[-1] = stack = reuse.stack(stack, reset=seeds, check=lambda s: _check_builds(state, s))
            else:
                stack.start()
    except DockappError as exc:
        fail_on(exc, state)
    for app in stack.services.values():
        state.config.hook.pytest_dockapp_app_ready(config=state.config, app=app)
    return stack


def _shared_stack(
    state: PluginState,
    project: Any,
    workerinput: dict[str, Any],
    service: str | None,
    main_options: dict[str, Any],
    timeout: float,
) -> Stack:
    """The stack every worker shares: it carries the controller's pid, and the controller removes it."""
    from pytest_dockapp.engine.cleanup import Owner
    from pytest_dockapp.services.shared import shared_stack

    owner = Owner(pid=int(workerinput["dockapp_controller_pid"]))
    folder = Path(workerinput["dockapp_shared_dir"])
    try:
        return shared_stack(
            state.apps(),
            project,
            folder,
            owner,
            main=service,
            host_ports=state.settings.compose_host_ports,
            main_options=main_options,
            timeout=timeout,
        )
    finally:
        state.progress.done("")


def _check_builds(state: PluginState, stack: Stack) -> None:
    """Build the stack's images (if not yet), tell the hook, and hold them to --dockapp-expect-cached."""
    from pytest_dockapp.core.errors import CacheRegressionError

    try:
        stack.build()
    finally:
        state.progress.done("")
    for name, image in stack.images.items():
        if image.record is None:
            continue
        state.config.hook.pytest_dockapp_build_finished(config=state.config, record=image.record)
        if state.settings.expect_cached:
            try:
                image.record.assert_fully_cached()
            except CacheRegressionError as exc:
                raise CacheRegressionError(
                    f"service {name}: {exc.what}", evidence=exc.evidence, hint=exc.hint
                ) from None


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
    dockapp_ready: str,
) -> Iterator[Callable[..., DockApp]]:
    """Build and start more apps with per-call settings; each is removed after the test.

    ``dockapp_factory(context=None, **call)``, ``call`` as :class:`FactoryCall` names it. Without
    ``context`` or ``image`` it uses the session's settings. With ``compose`` (files relative to
    the rootdir) it starts a stack of the test's own and returns its ``service`` (``app.services``
    has the others).
    """
    state = state_of(request.config)
    started: list[DockApp] = []
    stacks: list[Stack] = []
    # dockapp_fresh, in a session where more tests ask for it: its spares may start at once.
    likely = request.node.stash.get(_FRESH_LIKELY, False)
    session: dict[str, Any] = {"port": dockapp_port, "health_path": dockapp_health_path, "ready": dockapp_ready}
    session["timeout"] = dockapp_timeout

    def factory(context: str | os.PathLike[str] | None = None, **call: Unpack[FactoryCall]) -> DockApp:
        __tracebackhide__ = True
        _check_arguments(call)
        image, port, health_path = call.get("image"), call.get("port"), call.get("health_path")
        timeout, ready, name = call.get("timeout"), call.get("ready"), call.get("name")
        dockerfile, target, secrets = call.get("dockerfile"), call.get("target"), call.get("secrets")
        build_args, compose = call.get("build_args"), call.get("compose")
        if compose is not None:  # a stack of this test's own, removed after it
            given = {"port": port, "health_path": health_path, "ready": ready, "timeout": timeout}
            stacks.append(_own_stack(state, request, compose, call.get("service"), given, session, likely))
            return stacks[-1].main
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
                pick(state, "context", dockapp_context),
                pick(state, "dockerfile", dockapp_dockerfile, dockerfile),
                dockapp_build_args,
                pick(state, "target", dockapp_target, target),
                secrets,
                build_args,
            )
        else:
            ctx = Path(context)  # type: ignore[arg-type]
            where = str(ctx if ctx.is_absolute() else request.config.rootpath / ctx)  # one base: the rootdir
            ref = _build(state, where, dockerfile, {}, target, secrets, build_args)
        from pytest_dockapp.run.options import AppOptions

        def asked(key: str, value: Any) -> Any:  # the session's where the call gives none (readiness: always)
            return pick(state, key, session[key], value) if default or key in ("timeout", "ready") else value

        options = AppOptions.of(
            port=asked("port", port),
            health_path=asked("health_path", health_path),
            timeout=asked("timeout", timeout),
            ready=asked("ready", ready),
            env=call.get("env"),
            command=call.get("command"),
            network=call.get("network"),
            aliases=call.get("aliases", ()),
            host_ports=call.get("host_ports"),
            name=name,
        )
        app = _start_raising(state, ref, options, True, likely)  # one test's: maybe a warm spare
        started.append(app)
        request.node.stash.setdefault(ITEM_APPS, {})[name or f"factory-{len(started)}"] = app
        return app

    yield factory
    for app in started:
        _release(state, request.session, app, scope="function")
    for stack in stacks:
        if not state.leave_failed(stack):  # with --dockapp-keep, a failing test's stays running
            _close_stack(state, stack, wait=False)  # off the test's path; the session's end waits for it


def _own_stack(
    state: PluginState,
    request: pytest.FixtureRequest,
    compose: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    service: str | None,
    call: dict[str, Any],
    session: dict[str, Any],
    likely: bool,
) -> Stack:
    """A stack of the test's own; of the session's compose files, it takes the session's
    readiness settings (and --dockapp-image) where the call gives none."""
    __tracebackhide__ = True
    files = _as_list(compose)
    options = {key: call[key] for key in ("port", "health_path", "ready")}  # another project: the call's alone
    if files == state.session_compose:
        options = {key: pick(state, key, session[key], value) for key, value in options.items()}
    timeout = pick(state, "timeout", session["timeout"], call["timeout"])
    stack = _stack(state, files, service, options, timeout, fresh=True, likely=likely)
    request.node.stash.setdefault(ITEM_APPS, {}).update(stack.services)
    return stack


def _check_arguments(call: Mapping[str, Any]) -> None:
    """The factory's arguments: each a known name, and each setting checked by the settings
    table's own validator, with the error naming the argument."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import ConfigurationError

    unknown = sorted(set(call) - set(FactoryCall.__annotations__))
    if unknown:
        raise ConfigurationError(
            f"dockapp_factory() got an unknown argument: {', '.join(unknown)}",
            hint=f"it takes a context and {', '.join(FactoryCall.__annotations__)}",
        )
    for name in ("port", "health_path", "timeout", "ready"):
        value, parse = call.get(name), BY_NAME[name].parse
        if value is None or parse is None:
            continue
        try:
            parse(str(value))
        except ConfigurationError as exc:
            raise ConfigurationError(f"dockapp_factory({name}={value!r}): {exc.what}", hint=exc.hint) from None


#: Set on a test that asks for ``dockapp_fresh`` when other collected tests ask for it too.
_FRESH_LIKELY = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    fresh = [i for i in items if "dockapp_fresh" in getattr(i, "fixturenames", ())]
    for item in fresh:
        item.stash[_FRESH_LIKELY] = len(fresh) > 1


@pytest.fixture
def dockapp_fresh(
    request: pytest.FixtureRequest,
    dockapp_compose: list[str] | str,
    dockapp_service: str | None,
) -> DockApp:
    """An app of the session's image and settings for this test alone, removed after it. It
    comes from a warm spare (``dockapp_spares``) that started while the test before ran; with
    ``dockapp_compose``, it is a stack of the test's own."""
    __tracebackhide__ = True
    state = state_of(request.config)
    dockapp_factory: Callable[..., DockApp] = request.getfixturevalue("dockapp_factory")  # reads the stash above
    files = pick(state, "compose", dockapp_compose)
    if files:
        state.session_compose = _as_list(files)
        return dockapp_factory(compose=files, service=pick(state, "service", dockapp_service))
    return dockapp_factory()


@pytest.fixture
def dockapp_network(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh Docker network as a testcontainers ``Network``, removed after the test.

    Pass it to ``dockapp_factory(network=..., aliases=[...])`` and to testcontainers'
    ``DockerContainer(...).with_network(...)`` to put both on one network. Unless you
    configured testcontainers yourself, Ryuk is disabled when its image is not on the
    engine, and published ports are reached through the Docker host.
    """
    from pytest_dockapp.engine.cleanup import remove_network
    from pytest_dockapp.engine.interop import create_network

    apps = state_of(request.config).apps()
    network = create_network(apps.client, apps.owner)
    yield network
    remove_network(apps.client, network.id)
