"""One stack for several processes (all pytest-xdist workers): the first to ask starts it under
a file lock and records it; the others attach to the record. Whoever shared the folder out
removes the stack at its end (:func:`~pytest_dockapp.services.stack.remove_stack`), since a
process that finishes early must not remove a stack that others still use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.engine import cleanup
from pytest_dockapp.services.compose import Project
from pytest_dockapp.services.stack import Stack

if TYPE_CHECKING:
    from pytest_dockapp.run.manager import AppManager

RECORD_GLOB = "stack-*.json"


def shared_stack(
    manager: AppManager,
    project: Project,
    folder: Path,
    owner: cleanup.Owner,
    *,
    main: str | None = None,
    host_ports: bool = False,
    main_options: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Stack:
    """The stack of ``project`` in ``folder``: started here (its resources labelled with
    ``owner``, the process that removes it), or attached to when another process started it.
    A start that failed fails every process the same way, without a second try."""
    from pytest_dockapp.core.locks import FileLock

    key = hashlib.sha1(json.dumps([str(f) for f in project.files] + [main]).encode()).hexdigest()[:12]
    record = folder / f"stack-{key}.json"
    with FileLock(str(folder / f"stack-{key}.lock")):
        if record.exists():
            data = json.loads(record.read_text())
            if "starting" in data:
                data["error"] = ["the pytest-xdist worker that was starting the stack died", "", "see its crash above"]
            if "error" in data:
                what, evidence, hint = data["error"]
                raise DockappError(f"{what} (when another pytest-xdist worker started the stack)", evidence=evidence,
                                   hint=hint)  # fmt: skip
            return Stack.attach(manager, project, data)
        stack = Stack(
            manager, project, main=main, host_ports=host_ports, main_options=main_options, timeout=timeout, owner=owner
        )
        # Named before anything is created: whoever removes shared stacks finds it even if this dies.
        record.write_text(json.dumps({"name": stack.name, "starting": True}))
        try:
            stack.start()
        except DockappError as exc:
            record.write_text(json.dumps({"name": stack.name, "error": [exc.what, exc.evidence, exc.hint]}))
            raise
        except BaseException:
            record.write_text(json.dumps({"name": stack.name, "error": ["the stack's start was interrupted", "", ""]}))
            raise
        record.write_text(json.dumps(stack.record()))
        return stack


def recorded_stacks(folder: Path) -> list[str]:
    """The names of the stacks shared out through ``folder``."""
    names = []
    for path in sorted(folder.glob(RECORD_GLOB)):
        try:
            names.append(str(json.loads(path.read_text())["name"]))
        except (OSError, ValueError, KeyError):
            continue
    return names
