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
        self.summaries: dict[str, list[str]] = {}  # each worker's summary lines, by worker id
        import tempfile

        self.state = state
        self.shared_dir = tempfile.mkdtemp(prefix="dockapp-xdist-")
        self.crashed = False
        self._header = False

    def pytest_configure_node(self, node: Any) -> None:
        import os

        node.workerinput["dockapp_shared_dir"] = self.shared_dir
        node.workerinput["dockapp_controller_pid"] = os.getpid()  # the owner of stacks the workers share

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
        from pytest_dockapp.run.options import SessionOptions

        try:
            line = header_line(AppManager.connect(SessionOptions(s.builder, s.docker_cli, sweep_age=None)))
        except DockappError as exc:
            line = f"dockapp: no engine ({exc.what})"
        reporter = self.state.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = node.gateway.id
        self.summaries[worker] = list(output.get("dockapp_summary", []))
        self.state.take_coverage(output.get("dockapp_cov"))
        self.state.worker_summary = merge_summaries(self.summaries)
        self.crashed = self.crashed or error is not None

    def pytest_sessionfinish(self) -> None:
        self._remove_shared_stacks()
        from pytest_dockapp.reporting import write_lcov

        write_lcov(self.state)  # the workers' coverage and the shared stack's, once
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
                s = self.state.settings
                cleanup.sweep(connect(), cleanup.Owner(), age, kept=s.sweep_kept, reuse_ttl=s.reuse_ttl)

    def _remove_shared_stacks(self) -> None:
        """The compose stack the workers shared (dockapp_compose_scope = session): removed once
        every worker is done with it."""
        from pathlib import Path

        if not any(Path(self.shared_dir).glob("stack-*.json")):  # services.shared.RECORD_GLOB
            return  # no stack was shared (a run without -n is most): importing services/ costs 47 ms
        from pytest_dockapp.services.shared import recorded_stacks

        names = recorded_stacks(Path(self.shared_dir))
        if not names:
            return
        from pytest_dockapp.core.errors import DockappError
        from pytest_dockapp.engine.client import connect
        from pytest_dockapp.services.stack import remove_stack

        try:
            client = connect()
        except DockappError as exc:
            self.state.worker_lines.append(f"shared stacks {', '.join(names)} not removed: {exc.what}")
            return
        coverage = self.state.coverage_of_shared()
        for name in names:
            if coverage is not None:  # the shared stack's apps: measured before they go
                from pytest_dockapp.services.resources import STACK_LABEL

                coverage.collect_labelled(client, f"{STACK_LABEL}={name}")
            left = remove_stack(client, name)
            self.state.worker_lines.append(
                f"removed {name}, the stack the workers shared" + (f"; left: {' '.join(left)}" if left else "")
            )

    def pytest_unconfigure(self) -> None:
        import shutil

        shutil.rmtree(self.shared_dir, ignore_errors=True)


def _blocks(lines: list[str]) -> list[tuple[str, ...]]:
    """A summary's lines as blocks: a line and the indented lines under it (a stack's services)."""
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith(" ") and blocks:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return [tuple(b) for b in blocks]


def merge_summaries(by_worker: dict[str, list[str]]) -> list[str]:
    """The workers' summaries as one: a block that several workers tell (one image, one shared
    stack) once, with the workers that told it; a worker's "built once by another worker" or
    "started by another worker" line where that other worker's own line is there."""
    import re

    told: dict[tuple[str, ...], list[str]] = {}
    for worker, lines in by_worker.items():
        for block in _blocks(lines):
            told.setdefault(block, []).append(worker)
    heads = [block[0] for block in told]
    built = {m.group(1) for h in heads for m in [re.match(r"(?:built|reused) (\S+)(?: \(|: nothing)", h)] if m}
    stacks = {m.group(1) for h in heads for m in [re.match(r"stack (\S+) \(.*shared by every", h)] if m}
    out: list[str] = []
    for block, workers in told.items():
        other = re.match(r"reused (\S+): built once by another pytest-xdist worker", block[0])
        attached = re.match(r"stack (\S+) \(.*\): shared, started by another pytest-xdist worker", block[0])
        if (other and other.group(1) in built) or (attached and attached.group(1) in stacks):
            continue
        out.append(f"[{', '.join(workers)}] {block[0]}")
        out += block[1:]
    return out
