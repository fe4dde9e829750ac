"""The start order of a stack's services, from ``depends_on``."""

from __future__ import annotations

from collections.abc import Mapping

from pytest_dockapp.core.errors import ComposeError


def start_order(depends: Mapping[str, Mapping[str, str]], where: str = "the compose file") -> list[str]:
    """The services, each after everything it depends on (ties in file order); a cycle is an
    error that names it. Iterative: a chain of 1,500 services is as deep as the user writes it."""
    order: list[str] = []
    state: dict[str, str] = {}  # visiting | done
    for root in depends:
        if state.get(root) == "done":
            continue
        path = [root]
        stack = [iter(depends[root])]
        state[root] = "visiting"
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                done = path.pop()
                state[done] = "done"
                order.append(done)
                continue
            if state.get(dep) == "done":
                continue
            if state.get(dep) == "visiting":
                cycle = [*path[path.index(dep) :], dep]
                raise ComposeError(
                    f"{where}: depends_on has a cycle: {' -> '.join(cycle)}",
                    hint="a service cannot wait for a service that waits for it; remove one of these depends_on",
                )
            state[dep] = "visiting"
            path.append(dep)
            stack.append(iter(depends[dep]))
    return order
