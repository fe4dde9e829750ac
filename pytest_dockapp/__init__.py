"""pytest-dockapp: build a Dockerfile, run it, wait until it is really ready, test it.

The library works without pytest. ``_EXPORTS`` is the one list of the public surface: the
names are imported lazily from their modules (loading the pytest plugin stays cheap), and
``__all__`` is derived from it. The error tree is imported eagerly: it is small and plain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F403 (the error tree, listed in errors.__all__)
from .errors import __all__ as _ERRORS

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "AppRunner": "app",
    "DockApp": "app",
    "BuildRecord": "build",
    "BuildStep": "build",
    "build_image": "build",
    "CacheReport": "cache_check",
    "check_cache": "cache_check",
    "Dockerfile": "dockerfile",
    "AppManager": "manager",
    "BuildSpec": "manager",
    "Image": "manager",
    "wait_ready": "readiness",
    "resolve_builder": "engine",
}

__all__ = sorted([*_EXPORTS, *_ERRORS])

if TYPE_CHECKING:  # for type checkers (re-exports); tests/test_options.py checks it names exactly _EXPORTS
    from .app import AppRunner as AppRunner
    from .app import DockApp as DockApp
    from .build import BuildRecord as BuildRecord
    from .build import BuildStep as BuildStep
    from .build import build_image as build_image
    from .cache_check import CacheReport as CacheReport
    from .cache_check import check_cache as check_cache
    from .dockerfile import Dockerfile as Dockerfile
    from .engine import resolve_builder as resolve_builder
    from .manager import AppManager as AppManager
    from .manager import BuildSpec as BuildSpec
    from .manager import Image as Image
    from .readiness import wait_ready as wait_ready


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dockapp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
