"""pytest-dockapp: build a Dockerfile, run it, wait until it is really ready, test it.

The library works without pytest; names are imported lazily so that loading the
pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AppRunner": "app",
    "DockApp": "app",
    "BuildRecord": "build",
    "BuildStep": "build",
    "build_image": "build",
    "Dockerfile": "dockerfile",
    "Dockapps": "manager",
    "BuildSpec": "manager",
    "Image": "manager",
    "wait_ready": "readiness",
    "resolve_builder": "engine",
    "DockappError": "errors",
}

__all__ = [
    "AppRunner",
    "BuildRecord",
    "BuildSpec",
    "BuildStep",
    "DockApp",
    "DockappError",
    "Dockapps",
    "Dockerfile",
    "Image",
    "build_image",
    "resolve_builder",
    "wait_ready",
]

if TYPE_CHECKING:
    from .app import AppRunner, DockApp
    from .build import BuildRecord, BuildStep, build_image
    from .dockerfile import Dockerfile
    from .engine import resolve_builder
    from .errors import DockappError
    from .manager import BuildSpec, Dockapps, Image
    from .readiness import wait_ready


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dockapp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
