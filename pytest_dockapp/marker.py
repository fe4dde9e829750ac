"""The ``dockapp_cache`` marker: its report fixture, and the check that fails the test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dockapp.plugin_state import PluginState, fail_on, load_compose, pick, state_of

if TYPE_CHECKING:
    from pytest_dockapp.budgets.check import Budget, BudgetReport, Figures
    from pytest_dockapp.cache.check import CacheReport
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.images import Image


# -- the cache-regression marker ----------------------------------------------------------------

_MARKER_KEYS = ("change", "cached", "context", "dockerfile", "build_args", "target", "strict", "service")
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
    from pytest_dockapp.builds.image import BuildSpec
    from pytest_dockapp.cache.check import check_cache
    from pytest_dockapp.core.errors import DockappError

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
    state = state_of(request.config)
    kw = {**marker.kwargs, **_service_build(request, state, marker.kwargs)}
    apps = state.apps()
    context = kw.get("context") or pick(state, "context", dockapp_context)
    ctx = Path(context)
    if not ctx.is_absolute():
        ctx = request.config.rootpath / ctx  # one base for relative paths: the rootdir
    default = kw.get("context") is None
    # marker arguments over the command line over the fixture (and the ini file): as everywhere
    cli_args = state.settings.from_cli.get("build_args", {})
    args = {**(dockapp_build_args if default else {}), **cli_args, **(kw.get("build_args") or {})}
    apps.start_sweep()
    try:
        dockerfile = kw.get("dockerfile") or (pick(state, "dockerfile", dockapp_dockerfile) if default else None)
        target = kw.get("target") or (pick(state, "target", dockapp_target) if default else None)
        # the spec the session builds, with the marker's on top; its secrets (and a service's ssh) too
        secrets = kw.get("secrets", state.settings.secrets)
        report = check_cache(
            apps.client,
            BuildSpec(ctx, dockerfile, args, target, secrets, ssh=kw.get("ssh") or {}),
            builder=apps.builder,
            change=kw.get("change"),
            cached=kw.get("cached") or (),
            strict=bool(kw.get("strict", False)),
            owner=apps.owner,
            workdir=tmp_path_factory.getbasetemp(),
            cache_from=state.settings.cache_from,
        )
    except DockappError as exc:
        fail_on(exc, state)
    state.cache_reports.append((request.node.nodeid, report))
    request.node.stash[_CACHE_REPORT] = report
    request.config.hook.pytest_dockapp_cache_checked(config=request.config, item=request.node, report=report)
    return report


def _service_build(request: pytest.FixtureRequest, state: PluginState, kw: dict[str, Any]) -> dict[str, Any]:
    """With ``dockapp_compose`` (and no ``context=``): the build of the marker's ``service=``, or
    of the app's service, as marker arguments."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    files = pick(state, "compose", request.getfixturevalue("dockapp_compose"))
    if kw.get("context") is not None or not (files or kw.get("service")):
        return {}
    if not files:
        pytest.fail("dockapp_cache(service=...) needs a compose file: set dockapp_compose", pytrace=False)
    try:
        wanted = kw.get("service") or pick(state, "service", request.getfixturevalue("dockapp_service"))
        project = load_compose(state, files, wanted)
        name = project.main_service(wanted)
    except DockappError as exc:
        fail_on(exc, state)
    build = project.services[name].build
    if build is None:
        pytest.fail(
            f"dockapp_cache: service {name} has no build: in {files}, so it has no cache to check", pytrace=False
        )
    return {
        "context": str(build.context),
        "dockerfile": kw.get("dockerfile") or build.dockerfile,
        # the compose file's with the command line's on top (load_compose), then the marker's own
        "build_args": {**build.args, **(kw.get("build_args") or {})},
        "target": kw.get("target") or build.target,
        "secrets": build.secrets,
        "ssh": build.ssh,
    }


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names: list[str] | None = getattr(item, "fixturenames", None)
        if names is None:
            continue
        for marker, fixture in (("dockapp_cache", "dockapp_cache_report"), ("dockapp_budget", "dockapp_budget_report")):
            if item.get_closest_marker(marker) and fixture not in names:
                names.append(fixture)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # Masked as every other report is: a budget names layers by their history, which a classic
    # build writes with the build args a RUN saw.
    report = item.stash.get(_CACHE_REPORT, None)
    if report is not None and not report.ok:
        pytest.fail(state_of(item.config).mask(report.explain()), pytrace=False)
    budget = item.stash.get(_BUDGET_REPORT, None)
    if budget is not None and not budget.ok:
        pytest.fail(state_of(item.config).mask(budget.explain()), pytrace=False)


# -- the budget marker ---------------------------------------------------------------------------

_BUDGET_KEYS = ("size", "layers", "wasted", "ready", "build", "service", "time_on_remote")
_BUDGET_REPORT = pytest.StashKey["BudgetReport"]()


@pytest.fixture
def dockapp_budget_report(request: pytest.FixtureRequest) -> BudgetReport:
    """The ``dockapp_budget`` marker's report: the image's figures, and what is over budget."""
    __tracebackhide__ = True
    from pytest_dockapp.budgets.check import Budget
    from pytest_dockapp.core.errors import ConfigurationError

    marker = request.node.get_closest_marker("dockapp_budget")
    if marker is None:
        raise pytest.UsageError("dockapp_budget_report needs the test to carry @pytest.mark.dockapp_budget(...)")
    kw = dict(marker.kwargs)
    unknown = sorted(set(kw) - set(_BUDGET_KEYS))
    if marker.args or unknown or not set(kw) & {"size", "layers", "wasted", "ready", "build"}:
        what = f"unknown keyword(s) {', '.join(unknown)}" if unknown else "takes budgets as keywords"
        pytest.fail(f"dockapp_budget marker on {request.node.nodeid}: {what}; valid: {', '.join(_BUDGET_KEYS)}",
                    pytrace=False)  # fmt: skip
    service = kw.pop("service", None)
    try:
        budget = Budget.parse(kw)
    except ConfigurationError as exc:
        pytest.fail(f"dockapp_budget marker on {request.node.nodeid}: {exc.what}; {exc.hint}", pytrace=False)
    app = None
    if service is not None:
        _known_service(request, str(service))  # before the stack is built and started
        stack = request.getfixturevalue("dockapp_services")
        image, app = stack.images[service], stack.get(service)
    else:
        image = request.getfixturevalue("dockapp_image")
        if budget.ready is not None:
            app = request.getfixturevalue("dockapp")  # its start is a figure
    state = state_of(request.config)
    report = budget_report(state, image, budget, app)
    request.node.stash[_BUDGET_REPORT] = report
    if report.skipped and report.ok and all(_only_skipped(budget, report)):
        pytest.skip("; ".join(report.skipped))
    return report


def _known_service(request: pytest.FixtureRequest, service: str) -> None:
    """``service`` is a service of the session's compose file, or the marker fails at once."""
    __tracebackhide__ = True
    from pytest_dockapp.core.errors import DockappError

    state = state_of(request.config)
    files = pick(state, "compose", request.getfixturevalue("dockapp_compose"))
    where = f"dockapp_budget marker on {request.node.nodeid}"
    if not files:
        pytest.fail(f"{where}: service={service!r} needs a compose file: set dockapp_compose", pytrace=False)
    try:
        project = load_compose(state, files, None)
    except DockappError as exc:
        fail_on(exc, state)
    if service not in project.services:
        pytest.fail(
            f"{where}: service={service!r} is not a service of {', '.join(map(str, project.files))}; "
            f"its services: {', '.join(project.services)}",
            pytrace=False,
        )


def _only_skipped(budget: Budget, report: BudgetReport) -> list[bool]:
    """Whether every budget the marker asked for was skipped (time budgets on a remote engine)."""
    asked = [k for k in ("size", "layers", "ready", "build") if getattr(budget, k) is not None]
    asked += ["wasted"] if budget.needs_walk else []
    return [any(f"the {k} budget" in s for s in report.skipped) for k in asked]


def budget_report(state: PluginState, image: Image, budget: Budget, app: DockApp | None = None) -> BudgetReport:
    """``image`` measured (once per session, walked when a budget needs it) and checked; ``app``
    is a start of it that another pytest-xdist worker may have made (a shared stack's)."""
    __tracebackhide__ = True
    from pytest_dockapp.budgets.check import check
    from pytest_dockapp.core.errors import DockappError

    remote = not state.apps().endpoint.is_local
    try:
        figures = image_figures(state, image, walk=budget.needs_walk)
        if figures.ready is None and app is not None:
            figures.ready, figures.ready_samples = app.readiness.seconds, 1
        report = check(budget, figures, remote=remote, record=image.record)
        if not report.ok and figures.walk is None and budget.size is not None:
            # a failed size budget is worth a walk: it finds the package cache left behind, and the fix
            report = check(budget, image_figures(state, image, walk=True), remote=remote, record=image.record)
    except DockappError as exc:
        fail_on(exc, state)
    return report


def image_figures(state: PluginState, image: Image, walk: bool = False) -> Figures:
    """The figures of ``image``, measured once per session (walked at most once)."""
    from pytest_dockapp.budgets.check import measure

    apps = state.apps()
    known = state.figures.get(image.id)
    if known is None or (walk and known.walk is None):
        known = measure(apps.client, image.id, image.name, record=image.record, walk=walk, prebuilt=image.prebuilt)
        state.figures[image.id] = known
    known.set_ready([s.ready_seconds for s in apps.apps if s.image == image.ref])  # every start so far
    return known


def session_budget(state: PluginState, image: Image, kinds: Sequence[str]) -> None:
    """The ``dockapp_budget_*`` settings, held against the session image (or its app)."""
    __tracebackhide__ = True
    given = {k: getattr(state.settings, f"budget_{k}") for k in kinds}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return
    from pytest_dockapp.budgets.check import Budget
    from pytest_dockapp.core.errors import BudgetExceededError

    report = budget_report(state, image, Budget.parse(given))
    if not report.ok:
        hint = "the dockapp_budget_* settings set these limits (ini, or --dockapp-budget-* options)"
        fail_on(BudgetExceededError(report.explain(), hint=hint), state)
