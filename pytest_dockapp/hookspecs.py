"""Hooks that other plugins and ``conftest.py`` files can implement (registered by
``pytest_addhooks``), e.g. to push build timings to a dashboard or seed an app with data::

    def pytest_dockapp_app_ready(app):
        app.post("/fixtures", json={"users": 3})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dockapp.builds.record import BuildRecord
    from pytest_dockapp.cache.check import CacheReport
    from pytest_dockapp.run.app import DockApp


@pytest.hookspec
def pytest_dockapp_build_finished(config: pytest.Config, record: BuildRecord) -> None:
    """An image of this session was built, or reused (``record.reused``): its per-step record."""


@pytest.hookspec
def pytest_dockapp_app_ready(config: pytest.Config, app: DockApp) -> None:
    """An app is running and ready, before any test gets it. An exception here fails the fixture
    that started it (and the app is still removed)."""


@pytest.hookspec
def pytest_dockapp_cache_checked(config: pytest.Config, item: pytest.Item, report: CacheReport) -> None:
    """A ``dockapp_cache`` check of ``item`` ran, before its verdict fails or passes the test.

    ``report.steps``: the rebuild's steps (``index``, ``stage``, ``line``, ``text``, ``cached``,
    ``cacheable``); ``report.allowed``: those the Dockerfile lets miss after the change;
    ``report.demanded``: those ``cached=`` requires that missed; ``report.ok`` and
    ``report.summary()``: the verdict; ``report.warm.tag``: the warm image; ``report.advice``:
    the fix of a failing check (``.text``, ``.dockerfile``, ``.verified``)."""
