"""Hooks that other plugins and ``conftest.py`` files can implement (registered by
``pytest_addhooks``), e.g. to push build timings to a dashboard or seed an app with data::

    def pytest_dockapp_app_ready(app):
        app.post("/fixtures", json={"users": 3})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .app import DockApp
    from .build import BuildRecord


@pytest.hookspec
def pytest_dockapp_build_finished(config: pytest.Config, record: BuildRecord) -> None:
    """An image of this session was built, or reused (``record.reused``): its per-step record."""


@pytest.hookspec
def pytest_dockapp_app_ready(config: pytest.Config, app: DockApp) -> None:
    """An app is running and ready, before any test gets it. An exception here fails the fixture
    that started it (and the app is still removed)."""
