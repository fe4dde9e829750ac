"""Reporting through pytest: the header, container logs in failing tests' reports, the
session's end (teardown) and the terminal summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dockapp.plugin_state import ITEM_APPS, ITEM_START, PluginState, state_of

if TYPE_CHECKING:
    from pytest_dockapp.builds.record import BuildRecord
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.apps import AppStat
    from pytest_dockapp.run.manager import AppManager
    from pytest_dockapp.services.stack import Stack


# -- reporting -----------------------------------------------------------------------------------


def _uses_dockapp(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n.startswith("dockapp") for n in names) or item.get_closest_marker("dockapp_cache") is not None


def pytest_report_collectionfinish(config: pytest.Config, items: Sequence[pytest.Item]) -> list[str]:
    if not any(_uses_dockapp(item) for item in items):
        return []
    state = state_of(config)
    state.connect()  # not apps(): that would wait for the early start, which runs meanwhile
    apps = state.started
    if apps is None:
        return [f"dockapp: no engine ({state.error.what if state.error else 'unreachable'})"]
    reuse = state.reuse_status()[1]
    return [header_line(apps), reuse] if reuse else [header_line(apps)]


def header_line(apps: AppManager) -> str:
    """``dockapp: engine <version> at <endpoint>, builder <builder and why>``."""
    from pytest_dockapp.core.errors import DockappError
    from pytest_dockapp.engine.client import engine_version

    try:
        builder = apps.builder.describe()
    except DockappError as exc:
        builder = f"unavailable ({exc.what})"
    return f"dockapp: engine {engine_version(apps.client)} at {apps.endpoint.describe()}, builder {builder}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[ITEM_START] = time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    if call.when == "call":
        _record_properties(item)  # before the report is made: it copies the item's properties
    report = yield
    _refer_to_first(item, call, report)
    if report.failed and report.when in ("setup", "call"):
        apps = list(item.stash.get(ITEM_APPS, {}).values())
        from_fixtures = list(_fixture_apps(item).values())
        since = item.stash.get(ITEM_START, None)
        state = state_of(item.config)
        state.failed_apps.update(a.name for a in from_fixtures + apps)
        if report.when == "call" and state.settings.keep and "dockapp_clean" in getattr(item, "fixturenames", ()):
            state.keep_clean_data(item.nodeid)
        from pytest_dockapp.core.errors import cap
        from pytest_dockapp.run.readiness.logs import probes_note, without_probes

        engine_lost = state.started is not None and state.started.engine_lost
        for app in from_fixtures + [a for a in apps if a not in from_fixtures]:
            if engine_lost:
                report.sections.append((f"dockapp logs: {app.name}", "(not read: the engine stopped answering)"))
                continue
            # An app started in this test's setup logged our own probes while we waited for it
            # (trust III, 21: `[::ffff:127.0.0.1]:53636: response:200`, a HEALTHCHECK run of ours).
            try:
                lines, hidden = without_probes(
                    app.logs(tail=200, since=since, timestamps=True), app.readiness.probe_windows
                )
                text = "\n".join(lines + probes_note(hidden))
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


def _refer_to_first(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """A session fixture's failure in full for its first test only; the others refer to it (trust
    III, 15: a step table or a build log repeated in each of 8 tests)."""
    exc = call.excinfo.value if call.excinfo is not None else None
    what = getattr(exc, "dockapp_once", None)
    if not report.failed or what is None:
        return
    first = getattr(exc, "dockapp_first", None)
    if first is None:
        exc.dockapp_first = item.nodeid  # type: ignore[union-attr]
    elif first != item.nodeid:
        report.longrepr = f"({what} failed: see the first error above, in {first})"


def _fixture_apps(item: pytest.Item) -> dict[str, DockApp]:
    """The apps among the test's fixture values, by fixture name (the app module is loaded if
    there are any); an app of a compose stack brings every service of its stack, by service name."""
    module = sys.modules.get("pytest_dockapp.run.app")
    if module is None:
        return {}
    found: dict[str, DockApp] = {}
    for name, value in getattr(item, "funcargs", {}).items():
        stack = getattr(value, "services", None) if isinstance(value, module.DockApp) else None
        if isinstance(value, Mapping) and value and all(isinstance(v, module.DockApp) for v in value.values()):
            stack = value  # dockapp_services
        if stack:
            found.update(stack)
        elif isinstance(value, module.DockApp):
            found[name] = value
    return found


def _record_properties(item: pytest.Item) -> None:
    """Per app the test used: its image ID, its build's cache use and its time to ready, as
    JUnit XML properties (``dockapp.<key>.<what>``) that CI dashboards chart. The key is stable
    across runs: the fixture's name (``dockapp``), the factory's ``name=``, or ``factory-<n>``."""
    apps = _fixture_apps(item)
    for key, app in item.stash.get(ITEM_APPS, {}).items():
        if all(app is not known for known in apps.values()):
            apps[key] = app
    for key, app in apps.items():
        props = [("image", str(app.container.attrs.get("Image") or app.image))]
        record = app.build
        if record is not None:
            counts = f"{len(record.hits)}/{len(record.cacheable_steps)} steps cached"  # as summary() counts
            props.append(("build", counts + (", reused" if record.reused else "")))
        props.append(("ready_seconds", f"{app.readiness.seconds:.3f}"))
        props += _image_properties(item, app)
        item.user_properties += [(f"dockapp.{key}.{what}", value) for what, value in props]


def _image_name(state: PluginState, image_id: str, app: DockApp) -> str:
    """The tag the session knows ``image_id`` by (the apps run it by ID)."""
    if app.build is not None and app.build.tag:
        return app.build.tag
    apps = state.started
    known = [i for s in state.stacks for i in s.images.values()]
    known += (apps.prebuilt_images + apps.shared_images) if apps is not None else []
    return next((i.name for i in known if i.id == image_id and i.tag), image_id.split(":")[-1][:12])


def _image_properties(item: pytest.Item, app: DockApp) -> list[tuple[str, str]]:
    """The image's size and layers (its wasted bytes too once a budget walked it, its build time
    when a build ran), measured once per image per session."""
    state = state_of(item.config)
    image_id = str(app.container.attrs.get("Image") or "")
    apps = state.started
    if not item.config.getoption("xmlpath", None) and image_id not in state.figures:
        return []  # only JUnit XML shows them: measuring costs two engine calls (about 25 ms)
    if not image_id or apps is None or apps.engine_lost:
        return []
    figures = state.figures.get(image_id)
    if figures is None:
        from pytest_dockapp.budgets.check import measure

        try:
            figures = measure(apps.client, image_id, _image_name(state, image_id, app), record=app.build)
            state.figures[image_id] = figures
        except Exception:  # a report must not fail on a figure
            return []
    return figures.properties()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """With app coverage, the apps of the last tests are removed (their coverage taken) before
    pytest-cov, whose wrapper is outside this one, combines its data."""
    result = yield
    state = state_of(session.config)
    if state.coverage is not None and state.started is not None:
        state.started.settle()
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = state_of(config)
    if state.prestart is not None:
        state.prestart.cancel()
    apps = state.started
    if apps is not None:
        try:
            state.kept = apps.close(keep=state.failed_apps if state.settings.keep else ())
            if state.settings.remove_images:
                state.removed_images = apps.remove_built_images()
        except Exception as exc:  # the session's end never raises: it says what may be left
            state.teardown_error = state.mask(str(exc)).splitlines()[0]
        state.close_reuse()
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["dockapp_summary"] = _summary_lines(state)
        if state.coverage is not None:  # the controller combines every worker's once
            workeroutput["dockapp_cov"] = state.coverage.to_json()
    elif not config.pluginmanager.has_plugin("dockapp-xdist-controller"):  # it writes the workers' once
        write_lcov(state)


def write_lcov(state: PluginState) -> None:
    """``--dockapp-cov-lcov PATH``: the app's coverage for CI services, once every app is gone."""
    path = state.settings.cov_lcov
    if state.coverage is None or not path:
        return
    from pytest_dockapp.appcov.v8 import lcov

    target = state.config.rootpath / path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(lcov(state.coverage.files))
    except OSError as exc:
        state.coverage.problems.append(f"the LCOV file {target} could not be written ({exc})")


def _feature_lines(state: PluginState) -> list[str]:
    """What clean state (and the databases kept for failing tests) and reuse across runs did."""
    return state.clean_lines + state.kept_data_lines() + state.reuse_lines


def _coverage_lines(state: PluginState) -> list[str]:
    """The app's coverage, told once: by the session, or by the pytest-xdist controller for all workers."""
    if state.coverage is None or hasattr(state.config, "workerinput"):
        return []
    return state.coverage.summary(state.config.rootpath)


def _summary_lines(state: PluginState) -> list[str]:
    apps = state.started
    if apps is None:
        return []
    lines, in_stacks = _stack_lines(state)
    for image in apps.prebuilt_images:
        if image.id in in_stacks:
            continue
        pulled = f", pulled in {image.pull_seconds:.2f}s" if image.pull_seconds else ""
        lines.append(f"testing prebuilt image {image.tag} ({image.short_id}): not built{pulled}")
    for record in apps.builds:
        if id(record) in in_stacks:
            continue
        if record.reused:
            built_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.built_at))
            lines.append(
                f"reused {record.tag}: nothing it is built from changed since its last build "
                f"(checked in {record.reuse_seconds or 0:.2f}s; --dockapp-rebuild builds anyway); "
                f"step record from that build at {built_at}: {record.summary()}"
            )
        else:
            lines.append(f"built {record.tag} ({record.builder}) in {record.summary()}")
        lines += _registry_line(record, "  ")
    for image in apps.shared_images:
        if image.id in in_stacks:
            continue
        lines.append(f"reused {image.tag}: built once by another pytest-xdist worker")
    by_image: dict[str, list[AppStat]] = {}
    for stat in apps.apps:
        if stat.name not in in_stacks:
            by_image.setdefault(stat.image, []).append(stat)
    for image_name, stats in by_image.items():
        if len(stats) > _FOLD:  # a fresh app per test: one line, not a hundred
            checks = ", ".join(dict.fromkeys(s.checks for s in stats))
            lines.append(
                f"{len(stats)} apps of {image_name}: ready in {_spread([s.ready_seconds for s in stats])} ({checks})"
                + _removed_in(stats)
            )
            continue
        for stat in stats:
            down = f", removed in {stat.teardown_seconds:.2f}s" if stat.teardown_seconds is not None else ""
            lines.append(f"{stat.name}: ready in {stat.ready_seconds:.2f}s ({stat.checks}){down}")
    spares = apps.spares
    if spares.started:
        lines.append(
            f"warm spares: {spares.started} started, {spares.used} taken by tests, "
            f"{spares.started - spares.used - spares.dead} never used (removed; dockapp_spares = 0 turns them off)"
            + (f", {spares.dead} had exited before a test came for them (replaced)" if spares.dead else "")
        )
    for nodeid, report in state.cache_reports:
        source = f" ({report.warm.cache_use()})" if report.warm.cache_from else ""
        lines.append(
            f"cache check {nodeid}: warm build {report.warm.seconds:.2f}s{source}, "
            f"rebuild {report.rebuild.summary()}: {report.summary()}"
        )
    lines += [figures.line() for figures in state.figures.values()]
    lines += _feature_lines(state)
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
            + (
                f"; {len(swept.reusable)} containers of reusable apps and stacks unused past dockapp_reuse_ttl"
                if swept.reusable
                else ""
            )
        )
    return lines


#: More apps (or stacks) than this of one image (or compose file) are told in one line.
_FOLD = 3


def _spread(values: Sequence[float]) -> str:
    """``0.28s median (0.25-0.41s)``."""
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.2f}s median ({ordered[0]:.2f}-{ordered[-1]:.2f}s)"


def _removed_in(stats: Sequence[AppStat]) -> str:
    down = [s.teardown_seconds for s in stats if s.teardown_seconds is not None]
    return f", removed in {_spread(down)}" if down else ""


def _registry_line(record: BuildRecord, indent: str) -> list[str]:
    """What the registry cache did for a build, if it took part."""
    if not (record.pushed_to or record.cache_from):
        return []
    pushed = f"pushed to {record.pushed_to}; " if record.pushed_to else ""
    return [f"{indent}registry: {pushed}pulls and pushes added {record.registry_seconds:.2f}s"]


def _stack_lines(state: PluginState) -> tuple[list[str], set[Any]]:
    """One line per service of each stack: its build (or image) and its time to ready; and what
    those lines tell, so that the per-build and per-app lines do not repeat it. Stacks of one
    compose file past the first few (a stack per test) are told per service, in one line each."""
    lines: list[str] = []
    told: set[Any] = set()
    stats = {s.name: s for s in state.started.apps} if state.started is not None else {}
    shared = state.started.shared_images if state.started is not None else []
    alike: dict[tuple[str, str], list[Stack]] = {}
    for stack in state.stacks:
        files = " + ".join(str(f.name) for f in stack.project.files)
        if stack.attached and not stack.reused:
            lines.append(f"stack {stack.name} ({files}): shared, started by another pytest-xdist worker")
            continue
        group = alike.setdefault((files, stack.main_name), [])
        group.append(stack)
        if len(group) > _FOLD:
            told |= {app.name for app in [*stack.services.values(), *stack.completed.values()]}
            continue
        shared_out = "; shared by every pytest-xdist worker" if stack.shared_owner is not None else ""
        if stack.reused:
            shared_out = "; reused from the last run" if stack.attached else "; left running for the next run"
        header = f"stack {stack.name} ({files}{shared_out})"
        if not stack.images:
            lines.append(f"{header}: not started (it stopped before any service was built)")
            continue
        lines.append(f"{header}:")
        for name in stack.order:
            image = stack.images.get(name)
            if image is None:
                continue
            record = image.record
            told |= {image.id, id(record)}
            if any(image is other for other in shared):
                how = f"reused {image.name}: built once by another pytest-xdist worker"
            elif record is not None and record.reused:
                how = f"reused {record.tag}: nothing it is built from changed since its last build ({record.summary()})"
            elif record is not None:
                how = f"built {record.tag} ({record.builder}) in {record.summary()}"
            else:
                svc = stack.project.services[name]
                how = f"image {image.name}" + (f" ({svc.image_from}, in place of its build:)" if svc.image_from else "")
            app = stack.services.get(name) or stack.completed.get(name)
            if app is None:
                state_now = "stopped when the stack's start failed" if stack.was_created(name) else "not started"
                lines.append(f"  service {name}: {how}; {state_now}")
                continue
            told.add(app.name)
            stat = stats.get(app.name)
            down = f", removed in {stat.teardown_seconds:.2f}s" if stat and stat.teardown_seconds is not None else ""
            if name in stack.completed:
                lines.append(f"  service {name}: {how}; ran to the end: {app.readiness.checks}")
            else:
                lines.append(
                    f"  service {name}: {how}; ready in {app.readiness.seconds:.2f}s ({app.readiness.checks}){down}"
                )
            lines += _registry_line(record, "    ") if record is not None and not record.reused else []
    for (files, _), group in alike.items():
        if len(group) > _FOLD:
            lines += _folded_stacks(files, group[_FOLD:], stats)
    return lines, told


def _folded_stacks(files: str, stacks: Sequence[Stack], stats: Mapping[str, AppStat]) -> list[str]:
    """``N more stacks of compose.yaml``, and per service its times to ready and to removal."""
    lines = [f"{len(stacks)} more stack{'s' if len(stacks) > 1 else ''} of {files} (as above):"]
    for name in stacks[0].order:
        apps = [s.services[name] for s in stacks if name in s.services]
        if apps:
            ready = _spread([a.readiness.seconds for a in apps])
            removed = _removed_in([stats[a.name] for a in apps if a.name in stats])
            lines.append(f"  service {name}: ready in {ready}{removed}")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = state_of(terminalreporter.config)
    lines = _summary_lines(state) + state.worker_summary + state.worker_lines + _coverage_lines(state)
    if lines:
        terminalreporter.write_sep("-", "dockapp")
        for line in lines:
            terminalreporter.write_line(line)
