"""pytest-xdist: one shared build folder for all workers, one summary, a sweep after a crash."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from pytest_dockapp.plugin_state import PluginState


def xdist_loaded(config: pytest.Config) -> bool:
    """Whether pytest-xdist is active, however it was loaded (entry point, ``-p xdist.plugin``):
    by the hook it registers rather than by a plugin name."""
    return hasattr(config.hook, "pytest_configure_node")


class XdistController:
    """On the pytest-xdist controller: one shared build folder for all workers, one summary."""

    def __init__(self, state: PluginState):
        import tempfile

        self.state = state
        self.shared_dir = tempfile.mkdtemp(prefix="dockapp-xdist-")
        self.crashed = False
        self._header = False

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dockapp_shared_dir"] = self.shared_dir

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """The header's engine line, which the workers' collection reports cannot show here
        (trust III, 20). Only for a project with something to build or test: the controller
        cannot see which fixtures the tests use."""
        if self._header or not ids:
            return
        self._header = True
        s = self.state.settings
        if not (s.image or (s.context / (s.dockerfile or "Dockerfile")).is_file()):
            return
        from pytest_dockapp.core.errors import DockappError
        from pytest_dockapp.reporting import header_line
        from pytest_dockapp.run.manager import AppManager

        try:
            line = header_line(AppManager.connect(sweep_age=None, builder=s.builder, docker_cli=s.docker_cli))
        except DockappError as exc:
            line = f"dockapp: no engine ({exc.what})"
        reporter = self.state.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = node.gateway.id
        self.state.worker_lines += [f"[{worker}] {line}" for line in output.get("dockapp_summary", [])]
        self.crashed = self.crashed or error is not None

    def pytest_sessionfinish(self) -> None:
        # A crashed worker ran no teardown: its pid is gone now, so the sweep takes what it left.
        # Workers that finished cleaned up after themselves: no need to make the run wait.
        if self.crashed:
            from pytest_dockapp.core.errors import DockappError
            from pytest_dockapp.engine import cleanup
            from pytest_dockapp.engine.client import connect

            age = self.state.settings.sweep_age
            if age is None:
                return  # --dockapp-sweep-age off: the user asked for no sweep at all
            with contextlib.suppress(DockappError):
                cleanup.sweep(connect(), cleanup.Owner(), age, kept=self.state.settings.sweep_kept)

    def pytest_unconfigure(self) -> None:
        import shutil

        shutil.rmtree(self.shared_dir, ignore_errors=True)
