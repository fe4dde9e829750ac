"""pytest-dockapp: build a Dockerfile, run it, wait until it is really ready, test it.

The library works without pytest. ``_EXPORTS`` is the one list of the public surface: the
names are imported lazily from their modules (loading the pytest plugin stays cheap), and
``__all__`` is derived from it. The error tree is imported eagerly: it is small and plain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.errors import *  # noqa: F403 (the error tree, listed in errors.__all__)
from .core.errors import __all__ as _ERRORS

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "AppRunner": "run.app",
    "DockApp": "run.app",
    "BuildRecord": "builds.record",
    "BuildStep": "builds.record",
    "build_image": "builds.image",
    "CacheReport": "cache.check",
    "check_cache": "cache.check",
    "Dockerfile": "builds.dockerfile",
    "AppManager": "run.manager",
    "AppOptions": "run.options",
    "SessionOptions": "run.options",
    "BuildPolicy": "builds.pipeline",
    "Builds": "builds.pipeline",
    "RegistryCache": "builds.registry",
    "BuildSpec": "builds.image",
    "Image": "run.images",
    "wait_ready": "run.readiness.wait",
    "Stack": "services.stack",
    "load_project": "services.compose",
    "resolve_builder": "engine.client",
}

__all__ = sorted([*_EXPORTS, *_ERRORS])

if TYPE_CHECKING:  # for type checkers (re-exports); tests/test_options.py checks it names exactly _EXPORTS
    from .builds.dockerfile import Dockerfile as Dockerfile
    from .builds.image import BuildSpec as BuildSpec
    from .builds.image import build_image as build_image
    from .builds.pipeline import BuildPolicy as BuildPolicy
    from .builds.pipeline import Builds as Builds
    from .builds.record import BuildRecord as BuildRecord
    from .builds.record import BuildStep as BuildStep
    from .builds.registry import RegistryCache as RegistryCache
    from .cache.check import CacheReport as CacheReport
    from .cache.check import check_cache as check_cache
    from .engine.client import resolve_builder as resolve_builder
    from .run.app import AppRunner as AppRunner
    from .run.app import DockApp as DockApp
    from .run.images import Image as Image
    from .run.manager import AppManager as AppManager
    from .run.options import AppOptions as AppOptions
    from .run.options import SessionOptions as SessionOptions
    from .run.readiness.wait import wait_ready as wait_ready
    from .services.compose import load_project as load_project
    from .services.stack import Stack as Stack


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dockapp' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
