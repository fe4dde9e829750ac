"""The running apps of one session: started, removed after their test (in the background for a
test's own apps), and every one removed when the session ends."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_dockapp.engine import cleanup
from pytest_dockapp.run.app import AppRunner, DockApp
from pytest_dockapp.run.images import Image
from pytest_dockapp.run.options import AppOptions, RunContext

if TYPE_CHECKING:
    import docker


@dataclass
class AppStat:
    name: str
    image: str  # as the user named it (its tag), not its ID
    ready_seconds: float
    checks: str
    teardown_seconds: float | None = None


class Apps:
    """Runs apps for a session and removes them; :meth:`close` removes what is still running."""

    def __init__(
        self,
        client: docker.DockerClient,
        owner: cleanup.Owner,
        session: Callable[[], RunContext],
        podman: Callable[[], bool],
    ):
        self.client = client
        self.owner = owner
        self._session = session  # what the manager knows of every start (endpoint, publish address, guard)
        self._podman = podman
        self._runners: list[AppRunner] = []
        self._remover = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dockapp-remove")
        self._removals: list[tuple[frozenset[str], Future[None]]] = []  # with the container names each removes
        self._closed: list[AppRunner] = []
        self.stats: list[AppStat] = []

    def runner(
        self, image: Image | str, options: AppOptions, service: RunContext | None = None, track: bool = True
    ) -> AppRunner:
        """An :class:`AppRunner` for ``image`` that :meth:`close` will also remove (unless not
        ``track``: a stack others share, which its owner removes). ``service`` is what a compose
        service adds to the session's context: its owner, guard, ports and create arguments."""
        session = self._session()
        extra = service or RunContext()
        context = dataclasses.replace(
            extra,
            owner=extra.owner or self.owner,
            host_ip=session.host_ip,
            connect_host=session.connect_host,
            endpoint=session.endpoint,
            on_notice=session.on_notice,
            creation=extra.creation or session.creation,
            display=extra.display or (image.name if isinstance(image, Image) else None),
            build=image.record if isinstance(image, Image) else None,
            instrument=session.instrument,
        )
        runner = AppRunner(self.client, image.ref if isinstance(image, Image) else image, options, context)
        runner.podman = self._podman()
        if track:
            self._runners.append(runner)
        return runner

    def stop(self, app: DockApp, wait: bool = True) -> None:
        """Remove ``app``'s container. With ``wait=False`` the removal runs in the background
        (the next test need not wait for the engine); :meth:`close` waits for it."""
        for runner in list(self._runners):
            if runner.app is app:
                self._runners.remove(runner)
                if wait or runner.host_ports:  # a fixed host port must be free before anyone reuses it
                    self._close(runner)
                else:
                    self.later(functools.partial(self._close, runner), [runner.name])

    def later(self, removal: Callable[[], None], names: Iterable[str]) -> None:
        """Run ``removal`` (of the containers ``names``) in the background; :meth:`close` waits
        for it and reports its error."""
        self._removals.append((frozenset(names), self._remover.submit(removal)))

    def finish_removals(self, name: str | None = None) -> None:
        """Wait for the background removals (of earlier tests' apps), or only for the one of the
        container ``name``; their errors surface at close."""
        for names, removal in self._removals:
            if name is None or name in names:
                with contextlib.suppress(Exception):
                    removal.result()

    def _close(self, runner: AppRunner) -> None:
        self._closed.append(runner)
        runner.close()
        for stat in self.stats:
            if stat.name == runner.name:
                stat.teardown_seconds = runner.teardown_seconds

    def close(
        self, keep: Iterable[str], failed: Callable[[Exception], None], engine_lost: Callable[[], bool]
    ) -> tuple[list[DockApp], list[str]]:
        """Remove every app but those named in ``keep``, which are renamed ``<name>-kept``; each
        error goes to ``failed``, and once ``engine_lost()`` no further call is made. Returns
        the kept apps and the names of what could not be removed."""
        wanted = set(keep)
        kept, left = [], []
        for runner in [r for r in self._runners if r.app is not None and r.app.name in wanted]:
            self._runners.remove(runner)
            assert runner.app is not None and runner.container_id is not None
            try:
                self.client.api.rename(runner.container_id, runner.app.name + cleanup.KEPT)
                runner.app.name += cleanup.KEPT
            except Exception as exc:  # kept all the same, under its old name
                failed(exc)
            kept.append(runner.app)
        for _, removal in self._removals:
            try:
                removal.result()
            except Exception as exc:
                failed(exc)
        self._removals.clear()
        for runner in list(self._runners):
            self._runners.remove(runner)
            if engine_lost():
                left.append(runner.name)
                continue
            try:
                self._close(runner)
            except Exception as exc:  # one failed removal must not leak the rest
                failed(exc)
        left += [r.left_behind for r in self._closed if r.left_behind]
        return kept, left
