"""The example app configures pytest-dockapp for itself, so it works from any folder."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dockapp_context() -> str:
    return str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def dockapp_health_path() -> str:
    return "/health"
