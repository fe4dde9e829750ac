"""``--dockapp-lint`` and ``--dockapp-lint-only``: Dockerfiles collected as test items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.plugin_state import state_of


class LintCollector:
    """Registered only under ``--dockapp-lint`` or ``--dockapp-lint-only``: a hook per collected file
    costs time on big trees."""

    @staticmethod
    def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if is_dockerfile(file_path.name):
            return DockerfileLintFile.from_parent(parent, path=file_path)
        return None

    @staticmethod
    def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
        """The session's own Dockerfile is linted even when it is not under a collected path."""
        settings = state_of(config).settings
        path = (settings.context / (settings.dockerfile or "Dockerfile")).resolve()
        if path.is_file() and not any(getattr(i, "path", None) == path for i in items):
            items.append(DockerfileLintItem.from_parent(session, name=f"{path.name}::dockapp-lint", path=path))
        if settings.lint_only:
            others = [i for i in items if not isinstance(i, DockerfileLintItem)]
            if others:
                config.hook.pytest_deselected(items=others)
                items[:] = [i for i in items if isinstance(i, DockerfileLintItem)]


def is_dockerfile(name: str) -> bool:
    """``Dockerfile``, ``Dockerfile.dev``, ``app.Dockerfile``, ``app.dockerfile``, in any case (the
    builders take any name with -f), but not ``Dockerfile.dockerignore``."""
    low = name.lower()
    if low.endswith(".dockerignore"):
        return False
    return low == "dockerfile" or low.startswith("dockerfile.") or low.endswith(".dockerfile")


class DockerfileLintItem(pytest.Item):
    """One Dockerfile checked for cache-hostile layer order and package caches left in a layer
    (``--dockapp-lint``)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Some plugins read item.funcargs on every item (pytest-docker-tools does); give them one.
        self.funcargs: dict[str, Any] = {}

    def runtest(self) -> None:
        from pytest_dockapp.budgets.lint import size_lint
        from pytest_dockapp.builds.dockerfile import Dockerfile
        from pytest_dockapp.cache.lint import lint

        df = Dockerfile.read(self.path)
        findings: list[object] = [*lint(df), *size_lint(df)]
        if findings:
            raise _LintFailure("\n".join(str(f) for f in findings))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, _LintFailure):
            return str(excinfo.value)
        return str(excinfo.getrepr(style="short"))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"dockapp-lint {self.path.name}"


class _LintFailure(Exception):
    """A lint item's findings; the message is the report."""


class DockerfileLintFile(pytest.File):
    """A Dockerfile collected under ``--dockapp-lint``."""

    def collect(self) -> list[pytest.Item]:
        return [DockerfileLintItem.from_parent(self, name="dockapp-lint")]
