"""A clean, seeded database for every test: ``dockapp_seed`` (overridden in a ``conftest.py``)
prepares the data once; ``dockapp_clean`` puts every stateful service of the session's stack
back as seeded before each test, in place (see :mod:`pytest_dockapp.services.state`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.plugin_state import fail_on, pick, state_of, told_once

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.services.state import StackState


class _NothingSeeded:
    """What the default ``dockapp_seed`` gives: no seed ran, so a stack of a test's own starts as
    seeded as the session's."""

    def __repr__(self) -> str:
        return "<nothing seeded>"


NOTHING_SEEDED = _NothingSeeded()


@pytest.fixture(scope="session")
def dockapp_seed() -> Any:
    """The data every ``dockapp_clean`` test starts from, prepared once per stack. Override it
    in a ``conftest.py`` (it may request ``dockapp`` or ``dockapp_services``): run migrations,
    load fixtures, apply a SQL file. The default seeds nothing."""
    return NOTHING_SEEDED


@pytest.fixture(scope="session")
def dockapp_clean_state(request: pytest.FixtureRequest, dockapp_seed: Any) -> Iterator[StackState | None]:
    """The snapshot of the session stack's stateful services, taken once, right after the seed;
    None without a compose stack, or where a service keeps data no restore knows and nothing was
    seeded (``dockapp_clean`` then gives each test a fresh app or stack)."""
    __tracebackhide__ = True
    state = state_of(request.config)
    if not pick(state, "compose", request.getfixturevalue("dockapp_compose")):
        yield None
        return
    stack = request.getfixturevalue("dockapp_services")
    from pytest_dockapp.services.state import StackState, unrestorable

    odd = unrestorable(stack) if dockapp_seed is NOTHING_SEEDED else []
    if odd:
        # A stack of the test's own starts exactly as seeded (nothing was), whatever its services
        # keep; under pytest-xdist too, where the session's stack is shared.
        state.add_clean_line(
            f"clean state: service {', '.join(odd)} keeps data (a volume) of no kind that is put back in place, "
            "and dockapp_seed seeds nothing: each test got a fresh stack of its own (dockapp_fresh); "
            "x-dockapp: {state: ...} in the compose file names its kind, or none"
        )
        yield None
        return
    if (stack.shared_owner is not None or stack.attached) and not stack.reused:
        pytest.fail(
            "dockapp_clean under pytest-xdist with dockapp_compose_scope = session: every worker uses the one "
            "shared stack, so one worker's restore would wipe another's rows in the middle of its test\n"
            "hint: set dockapp_compose_scope = worker, so that each worker's stack is seeded and restored on its own",
            pytrace=False,
        )
    with told_once("the seeded snapshot"):
        try:
            snapshot = StackState.capture(stack)
        except DockappError as exc:
            fail_on(exc, state)
    state.watch_clean_state(snapshot, stack)
    yield snapshot
    snapshot.close()
    line = snapshot.summary()
    if line:
        state.add_clean_line(line)


@pytest.fixture
def dockapp_clean(request: pytest.FixtureRequest, dockapp_clean_state: StackState | None) -> DockApp:
    """The app, like ``dockapp``, with every stateful service of its stack (PostgreSQL, MariaDB,
    Redis) put back exactly as ``dockapp_seed`` left it, before this test. Without a compose stack,
    or where a service keeps data no restore knows and nothing is seeded, an app (a stack) of this
    test's own (``dockapp_fresh``)."""
    __tracebackhide__ = True
    if dockapp_clean_state is None:
        app: DockApp = request.getfixturevalue("dockapp_fresh")
        return app
    try:
        dockapp_clean_state.restore()
    except DockappError as exc:
        fail_on(exc, state_of(request.config))
    main: DockApp = request.getfixturevalue("dockapp")
    return main
