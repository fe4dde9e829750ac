"""The start order of a stack's services, from ``depends_on``."""

from __future__ import annotations

from collections.abc import Mapping

from pytest_dockapp.core.errors import ComposeError


def start_order(depends: Mapping[str, Mapping[str, str]], where: str = "the compose file") -> list[str]:
    """The services, each after everything it depends on (ties in file order); a cycle is an
    error that names it."""
    order: list[str] = []
    state: dict[str, str] = {}  # visiting | done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise ComposeError(
                f"{where}: depends_on has a cycle: {' -> '.join(cycle)}",
                hint="a service cannot wait for a service that waits for it; remove one of these depends_on",
            )
        state[name] = "visiting"
        for dep in depends[name]:
            visit(dep, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in depends:
        visit(name, [])
    return order
