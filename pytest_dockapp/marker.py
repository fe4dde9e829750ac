"""The ``dockapp_cache`` marker: its report fixture, and the check that fails the test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_dockapp.plugin_state import fail_on, pick, state_of

if TYPE_CHECKING:
    from pytest_dockapp.cache.check import CacheReport


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
    kw = marker.kwargs
    state = state_of(request.config)
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
        report = check_cache(
            apps.client,
            ctx,
            kw.get("dockerfile") or (pick(state, "dockerfile", dockapp_dockerfile) if default else None),
            builder=apps.builder,
            change=kw.get("change"),
            cached=kw.get("cached") or (),
            build_args=args,
            target=kw.get("target") or (pick(state, "target", dockapp_target) if default else None),
            strict=bool(kw.get("strict", False)),
            owner=apps.owner,
            workdir=tmp_path_factory.getbasetemp(),
        )
    except DockappError as exc:
        fail_on(exc, state)
    state.cache_reports.append((request.node.nodeid, report))
    request.node.stash[_CACHE_REPORT] = report
    request.config.hook.pytest_dockapp_cache_checked(config=request.config, item=request.node, report=report)
    return report


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names: list[str] | None = getattr(item, "fixturenames", None)
        if names is not None and item.get_closest_marker("dockapp_cache") and "dockapp_cache_report" not in names:
            names.append("dockapp_cache_report")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    report = item.stash.get(_CACHE_REPORT, None)
    if report is not None and not report.ok:
        pytest.fail(report.explain(), pytrace=False)
