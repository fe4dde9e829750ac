"""The builds and apps of one test session, usable without pytest.

>>> with AppManager.connect() as apps:
...     image = apps.image(BuildSpec("./my-app"))
...     with apps.run(image, AppOptions.of(health_path="/health")) as app:
...         assert app.get("/").ok
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING

from pytest_dockapp.builds.image import BuildSpec, known_secrets, stop_running_builds
from pytest_dockapp.builds.pipeline import Builds
from pytest_dockapp.builds.record import BuildRecord, ProgressCallback
from pytest_dockapp.builds.reuse import BuildCache
from pytest_dockapp.core.errors import DockappError, DockappWarning, EngineUnavailableError
from pytest_dockapp.core.redact import secret_build_args, secret_values
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import (
    Builder,
    connect,
    endpoint_of,
    engine_phase,
    is_engine_failure,
    is_podman,
    resolve_builder,
)
from pytest_dockapp.engine.endpoint import Endpoint, resolve_endpoint
from pytest_dockapp.run.app import AppRunner, DockApp
from pytest_dockapp.run.apps import Apps, AppStat
from pytest_dockapp.run.images import Image, Images
from pytest_dockapp.run.options import AppOptions, Instrument, RunContext, SessionOptions
from pytest_dockapp.run.spares import Spares

if TYPE_CHECKING:
    import docker

__all__ = ["AppManager", "AppStat", "BuildSpec", "Image"]


class AppManager:
    """The builds and apps of one session: it composes :class:`Images` (building, reuse, leases)
    and :class:`Apps` (running and removing), and owns what both need: the engine connection,
    the sweep, the builder, and the cancellation a session's end needs."""

    def __init__(
        self,
        client: docker.DockerClient,
        options: SessionOptions | None = None,
        *,
        owner: cleanup.Owner | None = None,
        endpoint: Endpoint | None = None,
        on_event: ProgressCallback | None = None,
        on_notice: Callable[[str], None] | None = None,
        build_cache: BuildCache | None = None,
    ):
        self.options = options = options or SessionOptions()
        self.client = client
        self.owner = owner or cleanup.Owner()
        self.endpoint = endpoint or endpoint_of(client)
        self.on_notice = on_notice
        self._podman: bool | None = None
        self._builder: Builder | None = None
        builds = Builds(
            client, lambda: self.builder, options.builds, cache=build_cache, on_event=on_event, on_notice=on_notice
        )
        self.images = Images(client, self.owner, builds, self.creation, shared_dir=options.shared_dir)
        self.running = Apps(client, self.owner, self._run_context, lambda: self.podman)
        self._sweep: Future[cleanup.SweepReport] | None = None
        #: Values of secret-looking build args and app env vars: masked in every report.
        self.secrets: set[str] = set()
        #: What could not be removed because the engine stopped answering (names).
        self.left_behind: list[str] = []
        self.engine_lost = False  # set by callers that saw the engine fail: no more calls at close
        #: Build args already warned about as secret-looking (the pytest layer warns at the
        #: user's ini line or command line instead, and fills this in).
        self.warned_args: set[str] = set()
        self.sweep_kept = False  # whether the sweep also takes other sessions' --dockapp-keep containers
        #: Set by :meth:`close`: an app that a background thread finishes starting afterwards is
        #: removed at once instead of being handed out.
        self.closed = False
        #: Set by :meth:`cancel`; checked, under ``_creating``, before every container is created.
        self.cancelled = threading.Event()
        self._creating = threading.Lock()
        #: Warm spares for :meth:`start_fresh` (and a test's own stacks): at most ``spares`` per
        #: image and settings, started ahead.
        self.spares = Spares(options.spares)
        #: Called first by :meth:`close`: what owns more than containers (a compose stack's
        #: network and volumes) removes it in order.
        self.closers: list[Callable[[], None]] = []
        self._instrument: Instrument | None = None

    def settle(self) -> None:
        """Wait for the removals running in the background (of earlier tests' apps)."""
        self.running.finish_removals()

    def watch(self, instrument: Instrument) -> None:
        """Have ``instrument`` watch every app built from the project's Dockerfiles (coverage)."""
        self._instrument = instrument

    @property
    def builds(self) -> list[BuildRecord]:
        return self.images.builds

    @property
    def shared_images(self) -> list[Image]:
        return self.images.shared_images

    @property
    def prebuilt_images(self) -> list[Image]:
        return self.images.prebuilt_images

    @property
    def apps(self) -> list[AppStat]:
        """Each app started: its time to ready, the checks that passed, its removal time."""
        return self.running.stats

    @classmethod
    def connect(
        cls,
        options: SessionOptions | None = None,
        *,
        endpoint: Endpoint | None = None,
        on_event: ProgressCallback | None = None,
        on_notice: Callable[[str], None] | None = None,
        build_cache: BuildCache | None = None,
    ) -> AppManager:
        """Connect to ``endpoint`` (None: the one ``DOCKER_HOST`` and the docker context name).
        Leftovers of killed sessions (older than ``options.sweep_age`` elsewhere; None: never)
        are swept in the background from the first build or app on, or at :meth:`close` at the latest."""
        endpoint = endpoint or resolve_endpoint()
        return cls(
            connect(endpoint=endpoint),
            options,
            endpoint=endpoint,
            on_event=on_event,
            on_notice=on_notice,
            build_cache=build_cache,
        )

    def start_sweep(self, max_age: float | None = None) -> None:
        """Sweep leftovers of dead sessions in the background (once per manager).

        It touches nothing of ours, so nobody waits for it. It starts with the first build or
        app rather than at connect, so that a session that only collects pays nothing, and so
        that its 10-20 ms of engine listings overlap engine work we wait on anyway.
        """
        age = self.options.sweep_age if max_age is None else max_age
        if self._sweep is not None or age is None:
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-sweep")
        self._sweep = pool.submit(
            cleanup.sweep, self.client, self.owner, age, kept=self.sweep_kept, reuse_ttl=self.options.reuse_ttl
        )
        pool.shutdown(wait=False)

    @property
    def sweep_report(self) -> cleanup.SweepReport | None:
        """What the sweep removed (waits for it to finish); None when no sweep ran or it failed."""
        if self._sweep is None:
            return None
        try:
            return self._sweep.result()
        except Exception:  # an unreachable engine is reported by whoever needs it
            return None

    @property
    def podman(self) -> bool:
        """Whether the engine is podman (asked once)."""
        if self._podman is None:
            self._podman = is_podman(self.client)
        return self._podman

    @property
    def builder(self) -> Builder:
        if self._builder is None:
            self._builder = resolve_builder(
                self.options.builder, self.options.docker_cli, endpoint=self.endpoint, podman=self.podman
            )
        return self._builder

    def image(self, spec: BuildSpec) -> Image:
        """Build ``spec`` (once per session, and once across pytest-xdist workers), or reuse its
        last build when nothing it reads changed. The image is leased until :meth:`close`."""
        known = self.images.known(spec)
        if known is not None:
            return known  # its secrets were read and its build args warned about the first time
        self.secrets |= known_secrets(spec.build_args, spec.secrets)
        for name, warning in secret_build_args(spec.build_args).items():
            if name not in self.warned_args:  # the pytest layer warned at the ini line already
                self.warned_args.add(name)
                warnings.warn(DockappWarning(warning), stacklevel=2)
        self.start_sweep()
        try:
            with engine_phase(f"building {spec.context}", self.endpoint):
                return self.images.get(spec)
        except EngineUnavailableError:
            self.engine_lost = True
            raise

    def cancel(self) -> None:
        """Stop work under way in other threads: running BuildKit builds end, and no container is
        created from now on (a creation under way finishes first, and is recorded for :meth:`close`)."""
        with self._creating:
            self.cancelled.set()
        stop_running_builds()

    @contextlib.contextmanager
    def creation(self, what: str) -> Iterator[None]:
        """Create and record ``what`` under the lock :meth:`cancel` takes: either it is recorded
        (and :meth:`close` removes it), or it is never created."""
        with self._creating:
            if self.cancelled.is_set():
                raise DockappError(f"{what} was not created: the session was ending")
            yield

    # -- what the other parts of a session (a stack, the pytest layer) tell the manager --------

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call ``closer`` when the session ends (a stack's removal of its network and volumes)."""
        with self._creating:
            self.closers.append(closer)

    def forget_close(self, closer: Callable[[], None]) -> None:
        """``closer`` ran already; a creation under way is recorded before this returns."""
        with self._creating, contextlib.suppress(ValueError):
            self.closers.remove(closer)

    def mask(self, values: Iterable[str]) -> None:
        """Mask these values (secrets a service or a compose file holds) in every report."""
        self.secrets |= {v for v in values if v}

    def lose_engine(self) -> None:
        """The engine stopped answering: no further call is made at close, each would time out."""
        self.engine_lost = True

    def leave_behind(self, names: Iterable[str | None]) -> None:
        """What could not be removed (the engine was lost), to name in the summary."""
        self.left_behind += [n for n in names if n]

    def settings(self, *, sweep_kept: bool, warned_args: Iterable[str]) -> None:
        """The pytest layer's settings the manager uses: whether the sweep takes other sessions'
        kept containers, and the build args already warned about at the user's ini line."""
        self.sweep_kept = sweep_kept
        self.warned_args.update(warned_args)

    def prebuilt(self, ref: str) -> Image:
        """An image that was built elsewhere (an earlier CI stage); it must be on the engine."""
        return self.images.prebuilt(ref)

    def pinned_by_containers(self, images: Iterable[Image]) -> None:
        """``images`` run in containers that outlive the session (reused): their leases can go now."""
        self.images.unlease_later(images)

    @contextlib.contextmanager
    def leases_held(self) -> Iterator[list[Image]]:
        """Inside, images are leased only at the end, and not those added to the list it gives:
        running containers that outlive the session (a reused stack's) pin them."""
        pinned: list[Image] = []
        self.images.hold_leases()
        try:
            yield pinned
        finally:
            self.images.resume_leases(pinned)

    def _run_context(self) -> RunContext:
        """What every start of this session shares: the publish address, where ports are dialled,
        the engine, the notice line, and the guard that a session's end takes."""
        return RunContext(
            owner=self.owner,
            host_ip=self.options.host_ip,
            connect_host=self.options.connect_host,
            endpoint=self.endpoint,
            on_notice=self.on_notice,
            creation=self.creation,
            instrument=self._instrument,
        )

    def run(
        self,
        image: Image | str,
        options: AppOptions | None = None,
        service: RunContext | None = None,
        track: bool = True,
    ) -> AppRunner:
        """An :class:`AppRunner` for ``image`` that :meth:`close` will also remove; without
        ``options``, the session's readiness mode and the defaults."""
        return self.running.runner(image, options or AppOptions.of(ready=self.options.ready), service, track)

    def start(self, image: Image | str, options: AppOptions | None = None) -> DockApp:
        """Start an app and wait until it is ready; it stays up until :meth:`stop` or :meth:`close`."""
        runner = self.run(image, options)
        return self.start_runner(runner)

    def start_fresh(self, image: Image | str, options: AppOptions, *, likely: bool = False) -> DockApp:
        """As :meth:`start`, for an app of one test: taken from a warm spare when one is there, and
        the next one for the same image and settings starts in the background meanwhile (from the
        second app of those settings, or the first when ``likely``: more tests will ask)."""
        if not options.spareable:
            return self.start(image, options)
        key = ("app", image if isinstance(image, str) else image.ref, options)
        return self.spares.fresh(
            key,
            DockApp,
            lambda: self.start(image, options),
            likely=likely,
            dead=lambda app: app.exit_status(),
            discard=self._discard_spare,
        )

    def _discard_spare(self, spare: DockApp, why: str) -> None:
        """A spare that died while it waited: said (with its last log lines: the app's own fault,
        most likely), removed in the background, and replaced by a start for the test."""
        lines = [line for line in spare.logs(tail=5).splitlines() if line.strip()]
        log = ("; its last log lines: " + " | ".join(lines)) if lines else ""
        if self.on_notice is not None:
            self.on_notice(f"a warm spare of {spare.name} {why} before a test took it; started another{log}")
        self.stop(spare, wait=False)

    def start_runner(self, runner: AppRunner) -> DockApp:
        """Start what :meth:`run` made, as :meth:`start` does."""
        self.secrets |= secret_values(runner.env)
        self.start_sweep()
        if runner.host_ports:
            _ = self.sweep_report  # a killed session's container may still hold that fixed port
        if runner.host_ports:
            self.running.finish_removals()  # an earlier test's app may still hold that port
        elif runner.name_given:
            self.running.finish_removals(runner.name)  # an earlier test's app of that name may still be going
        try:
            with engine_phase(f"starting {runner.name} from {runner.display}", self.endpoint):
                app = runner.start()
        except EngineUnavailableError:
            self.engine_lost = True
            if runner.left_behind:
                self.left_behind.append(runner.left_behind)
            raise
        if self.closed:  # the session ended while this app was starting (in the background)
            runner.close()
            raise DockappError(f"{app.name} became ready after the session ended; it was removed")
        self.running.stats.append(AppStat(app.name, runner.display, app.readiness.seconds, app.readiness.checks))
        return app

    def stop(self, app: DockApp, wait: bool = True) -> None:
        """Remove ``app``'s container. With ``wait=False`` the removal runs in the background
        (the next test need not wait for the engine); :meth:`close` waits for it."""
        self.running.stop(app, wait)

    def close(self, keep: Iterable[str] = ()) -> list[DockApp]:
        """Remove every container still running, but the apps named in ``keep``: those are
        renamed ``<name>-kept`` (the sweep of later sessions leaves them alone) and returned.

        Once the engine fails to answer, no further call is made (each would wait out the call
        timeout): what is left is in :attr:`left_behind`, and an :class:`EngineUnavailableError`
        is raised after everything else was tried.
        """
        self.closed = True
        self.cancel()  # a build or start in the background, if the session ends before it does
        self.start_sweep()  # a session that started no app still sweeps
        if not self.engine_lost:
            _ = self.sweep_report  # never leave the sweep running past the session
        errors: list[Exception] = []

        def failed(exc: Exception) -> None:
            errors.append(exc)
            self.engine_lost = self.engine_lost or is_engine_failure(exc)

        for closer in list(self.closers):
            try:
                closer()
            except Exception as exc:  # one failed removal must not leak the rest
                failed(exc)
        kept, left = self.running.close(keep, failed, lambda: self.engine_lost)
        self.spares.close()  # the starts under way end once their containers are gone
        kept_late, left_late = self.running.close(keep, failed, lambda: self.engine_lost)  # a spare that won a race
        kept, left = kept + kept_late, list(dict.fromkeys(left + left_late))
        leases = self.images.release(failed, lambda: self.engine_lost)
        self.left_behind += left + leases
        if errors:
            with engine_phase("removing this session's containers", self.endpoint):
                raise errors[0]
        return kept

    def remove_built_images(self) -> list[str]:
        """Remove the images this manager built or reused (they are also the layer cache), after
        :meth:`close`; one line per image says what happened. Never forced: an image that a
        container of another live session uses (its app, or its lease) is kept."""
        return self.images.remove_built()

    def __enter__(self) -> AppManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
