"""The builds and apps of one test session, usable without pytest.

>>> with AppManager.connect() as apps:
...     image = apps.image(BuildSpec("./my-app"))
...     with apps.run(image, health_path="/health") as app:
...         assert app.get("/").ok
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import cleanup
from .app import AppRunner, DockApp
from .build import BuildRecord, ProgressCallback, build_image, resolve_paths, secret_value, stop_running_builds
from .build_reuse import BuildCache, fingerprint
from .build_reuse import Entry as CacheEntry
from .dockerfile import Dockerfile
from .endpoint import Endpoint, resolve_endpoint
from .engine import Builder, connect, endpoint_of, engine_phase, is_engine_failure, is_podman, resolve_builder
from .errors import ConfigurationError, DockappError, DockappWarning, EngineUnavailableError
from .redact import looks_secret, secret_values

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class BuildSpec:
    """What to build: context folder, Dockerfile, build args and target stage."""

    context: str | os.PathLike[str]
    dockerfile: str | os.PathLike[str] | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    #: BuildKit build secrets, ``{id: file path or environment variable name}``.
    secrets: Mapping[str, str] = field(default_factory=dict)

    def key(self) -> str:
        ctx, df = resolve_paths(self.context, self.dockerfile)
        raw = json.dumps([str(ctx), str(df), sorted(self.build_args.items()), self.target, sorted(self.secrets)])
        return hashlib.sha1(raw.encode()).hexdigest()[:16]


@dataclass
class Image:
    """A built or prebuilt image, with the record of the build that made it when known."""

    id: str
    tag: str | None
    record: BuildRecord | None = None
    prebuilt: bool = False  # given by the user (--dockapp-image), not built from a spec

    def __repr__(self) -> str:
        return f"Image(id={self.id!r}, tag={self.tag!r}, prebuilt={self.prebuilt})"

    @property
    def ref(self) -> str:
        """What apps run: the image ID, so that a tag moved by another build cannot swap it."""
        return self.id

    @property
    def short_id(self) -> str:
        """The ID as ``docker images`` shows it."""
        return self.id.split(":")[-1][:12]

    @property
    def name(self) -> str:
        """The tag when there is one (readable in ``docker ps`` and reports), else the short ID."""
        return self.tag or self.short_id


@dataclass
class AppStat:
    name: str
    image: str
    ready_seconds: float
    checks: str
    teardown_seconds: float | None = None


class AppManager:
    """Builds images once per spec, runs apps, and removes every container it started."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        builder: str = "auto",
        docker_cli: str | None = None,
        owner: cleanup.Owner | None = None,
        host_ip: str | None = None,
        connect_host: str | None = None,
        ready: str = "auto",
        endpoint: Endpoint | None = None,
        shared_dir: Path | None = None,
        on_event: ProgressCallback | None = None,
        on_notice: Callable[[str], None] | None = None,
        reuse_unchanged: bool = True,
        build_cache: BuildCache | None = None,
    ):
        self.client = client
        self.owner = owner or cleanup.Owner()
        self.endpoint = endpoint or endpoint_of(client)
        self.host_ip = host_ip
        self.connect_host = connect_host
        self.ready = ready
        self._podman: bool | None = None
        self.shared_dir = shared_dir
        self.on_event = on_event
        self.on_notice = on_notice
        self.reuse_unchanged = reuse_unchanged
        self._build_cache = build_cache or BuildCache()
        self._builder_choice = builder
        self._docker_cli = docker_cli
        self._builder: Builder | None = None
        self._images: dict[str, Image] = {}
        self._runners: list[AppRunner] = []
        self._remover = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dockapp-remove")
        self._removals: list[Future[None]] = []
        self.apps: list[AppStat] = []
        self.builds: list[BuildRecord] = []
        self.shared_images: list[Image] = []
        self.prebuilt_images: list[Image] = []
        self._sweep: Future[cleanup.SweepReport] | None = None
        self._sweep_age: float | None = None
        self._leases: dict[str, str] = {}  # image ID -> the lease container that pins it
        #: Values of secret-looking build args and app env vars: masked in every report.
        self.secrets: set[str] = set()
        #: What could not be removed because the engine stopped answering (names).
        self.left_behind: list[str] = []
        self.engine_lost = False  # set by callers that saw the engine fail: no more calls at close
        self._closed: list[AppRunner] = []
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

    @classmethod
    def connect(cls, *, sweep_age: float | None = cleanup.DEFAULT_SWEEP_AGE, **kwargs: Any) -> AppManager:
        """Connect to the engine. Leftovers of killed sessions (older than ``sweep_age``
        elsewhere; None: never) are swept in the background from the first build or app on,
        or at :meth:`close` at the latest."""
        endpoint = kwargs.pop("endpoint", None) or resolve_endpoint()
        apps = cls(connect(endpoint=endpoint), endpoint=endpoint, **kwargs)
        apps._sweep_age = sweep_age
        return apps

    def start_sweep(self, max_age: float | None = None) -> None:
        """Sweep leftovers of dead sessions in the background (once per manager).

        It touches nothing of ours, so nobody waits for it. It starts with the first build or
        app rather than at connect, so that a session that only collects pays nothing, and so
        that its 10-20 ms of engine listings overlap engine work we wait on anyway.
        """
        age = self._sweep_age if max_age is None else max_age
        if self._sweep is not None or age is None:
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-sweep")
        self._sweep = pool.submit(cleanup.sweep, self.client, self.owner, age, kept=self.sweep_kept)
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
                self._builder_choice, self._docker_cli, endpoint=self.endpoint, podman=self.podman
            )
        return self._builder

    def image(self, spec: BuildSpec) -> Image:
        """Build ``spec`` (once per session, and once across pytest-xdist workers), or reuse its
        last build when nothing it reads changed. The image is leased until :meth:`close`."""
        key = spec.key()
        if key in self._images:
            return self._images[key]
        self.secrets |= secret_values(spec.build_args)
        for sid, source in spec.secrets.items():
            with contextlib.suppress(DockappError):  # a bad source is the build's error to raise
                self.secrets.add(secret_value(sid, source).strip())
        secretive = (k for k, v in spec.build_args.items() if v and looks_secret(k))
        for name in sorted(k for k in secretive if k not in self.warned_args):
            self.warned_args.add(name)
            warnings.warn(
                DockappWarning(
                    f"build arg {name} looks secret: build arg values are stored in the image's history "
                    "(docker history shows them); pass secrets as BuildKit build secrets instead "
                    "(RUN --mount=type=secret)"
                ),
                stacklevel=2,
            )
        self.start_sweep()
        try:
            with engine_phase(f"building {spec.context}", self.endpoint):
                image = self._build(spec) if self.shared_dir is None else self._build_shared(spec, key)
                if not self._lease(image):
                    image = self._build(spec, reuse=False)  # removed since it was built: build it again
                    self._lease(image)
        except EngineUnavailableError:
            self.engine_lost = True
            raise
        self._images[key] = image
        return image

    def cancel(self) -> None:
        """Stop work under way in other threads: running BuildKit builds end, and no container is
        created from now on (a creation under way finishes first, and is recorded for :meth:`close`)."""
        with self._creating:
            self.cancelled.set()
        stop_running_builds()

    @contextlib.contextmanager
    def _creation(self, what: str) -> Iterator[None]:
        """Create and record ``what`` under the lock :meth:`cancel` takes: either it is recorded
        (and :meth:`close` removes it), or it is never created."""
        with self._creating:
            if self.cancelled.is_set():
                raise DockappError(f"{what} was not created: the session was ending")
            yield

    def _lease(self, image: Image) -> bool:
        """Pin ``image`` with a created, never started, labelled container until :meth:`close`, so
        that no other session's ``--dockapp-remove-images`` can delete it while this session may
        still start it (the engine refuses to remove an image a container uses). False when the
        image is already gone."""
        import docker.errors

        if image.id in self._leases:
            return True
        with self._creation(f"the lease of {image.name}"):
            try:
                created = self.client.api.create_container(
                    image.id,
                    command=["pytest-dockapp-lease"],
                    name=f"dockapp-lease-{self.owner.id[:8]}-{len(self._leases) + 1}",
                    labels=self.owner.labels("lease"),
                )
            except docker.errors.ImageNotFound:
                return False
            self._leases[image.id] = created["Id"]
        return True

    def _build(self, spec: BuildSpec, reuse: bool = True) -> Image:
        started = time.perf_counter()
        ctx, df_path = resolve_paths(spec.context, spec.dockerfile)
        inputs = None
        if self.reuse_unchanged and reuse:
            df = Dockerfile.read(df_path)
            inputs = fingerprint(
                self.client,
                ctx,
                df_path,
                df,
                build_args=spec.build_args,
                target=spec.target,
                builder=self.builder.name,
            )
            last = self._build_cache.lookup(spec.key()) if inputs else None
            if last is not None and last.fingerprint == inputs and self._tagged(last.tag, last.image_id):
                try:
                    record = BuildRecord.from_json(last.record, ctx, df)
                except (KeyError, TypeError, ValueError):
                    pass  # an entry of an older version, or damaged: build
                else:
                    record.reuse_seconds = time.perf_counter() - started
                    self.builds.append(record)
                    return Image(record.image_id, record.tag, record)
        record = build_image(
            self.client,
            spec.context,
            spec.dockerfile,
            builder=self.builder,
            build_args=spec.build_args,
            target=spec.target,
            # One label: on the classic builder each label is a build step of its own.
            labels={cleanup.OWNER: cleanup.OWNER_VALUE},
            on_event=self.on_event,
            secrets=spec.secrets,
        )
        self.builds.append(record)
        if inputs and record.tag:
            self._build_cache.store(spec.key(), CacheEntry(inputs, record.image_id, record.tag, record.to_json()))
        return Image(record.image_id, record.tag, record)

    def _tagged(self, tag: str, image_id: str) -> bool:
        import docker.errors

        try:
            return bool(self.client.api.inspect_image(tag)["Id"] == image_id)
        except docker.errors.ImageNotFound:
            return False

    def _build_shared(self, spec: BuildSpec, key: str) -> Image:
        import docker.errors
        from filelock import FileLock

        assert self.shared_dir is not None
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        result = self.shared_dir / f"build-{key}.json"
        with FileLock(str(self.shared_dir / f"build-{key}.lock")):
            if result.exists():
                data = json.loads(result.read_text())
                try:
                    self.client.api.inspect_image(data["id"])
                except docker.errors.ImageNotFound:
                    pass  # removed since: build again
                else:
                    ctx, df_path = resolve_paths(spec.context, spec.dockerfile)
                    record = BuildRecord.from_json(data["record"], ctx, Dockerfile.read(df_path))
                    image = Image(data["id"], data["tag"], record)
                    self.shared_images.append(image)
                    return image
            image = self._build(spec)
            assert image.record is not None
            result.write_text(json.dumps({"id": image.id, "tag": image.tag, "record": image.record.to_json()}))
            return image

    def prebuilt(self, ref: str) -> Image:
        """An image that was built elsewhere (an earlier CI stage); it must be on the engine."""
        import docker.errors

        try:
            attrs = self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            raise ConfigurationError(
                f"image {ref!r} is not on the engine",
                hint="build or load it first (docker build -t / docker load), or drop --dockapp-image "
                "to let the plugin build the Dockerfile",
            ) from None
        image = Image(attrs["Id"], ref, prebuilt=True)
        self._lease(image)
        self.prebuilt_images.append(image)
        return image

    def run(self, image: Image | str, **kwargs: Any) -> AppRunner:
        """An :class:`AppRunner` for ``image`` that this manager will also close."""
        ref = image.ref if isinstance(image, Image) else image
        record = image.record if isinstance(image, Image) else None
        kwargs.setdefault("host_ip", self.host_ip)
        kwargs.setdefault("connect_host", self.connect_host)
        kwargs.setdefault("endpoint", self.endpoint)
        kwargs.setdefault("ready", self.ready)
        kwargs.setdefault("on_notice", self.on_notice)
        kwargs.setdefault("creation", self._creation)
        if isinstance(image, Image):
            kwargs.setdefault("display", image.name)
        runner = AppRunner(self.client, ref, owner=self.owner, build=record, **kwargs)
        runner.podman = self.podman
        self._runners.append(runner)
        return runner

    def start(self, image: Image | str, **kwargs: Any) -> DockApp:
        """Start an app and wait until it is ready; it stays up until :meth:`stop` or :meth:`close`."""
        runner = self.run(image, **kwargs)
        self.secrets |= secret_values(runner.env)
        self.start_sweep()
        if runner.host_ports:
            _ = self.sweep_report  # a killed session's container may still hold that fixed port
        if kwargs.get("name") or runner.host_ports:
            self._finish_removals()  # an earlier test's app of that name (or port) may still be going
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
        self.apps.append(AppStat(app.name, runner.image, app.readiness.seconds, app.readiness.checks))
        return app

    def stop(self, app: DockApp, wait: bool = True) -> None:
        """Remove ``app``'s container. With ``wait=False`` the removal runs in the background
        (the next test need not wait for the engine); :meth:`close` waits for it."""
        for runner in list(self._runners):
            if runner.app is app:
                self._runners.remove(runner)
                if wait or runner.host_ports:  # a fixed host port must be free before anyone reuses it
                    self._close(runner)
                else:
                    self._removals.append(self._remover.submit(self._close, runner))

    def _finish_removals(self) -> None:
        """Wait for the background removals (of earlier tests' apps); their errors surface at close."""
        for removal in self._removals:
            with contextlib.suppress(Exception):
                removal.result()

    def _close(self, runner: AppRunner) -> None:
        self._closed.append(runner)
        runner.close()
        for stat in self.apps:
            if stat.name == runner.name:
                stat.teardown_seconds = runner.teardown_seconds

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
        wanted = set(keep)
        kept = []
        errors: list[Exception] = []

        def failed(exc: Exception) -> None:
            errors.append(exc)
            self.engine_lost = self.engine_lost or is_engine_failure(exc)

        for runner in [r for r in self._runners if r.app is not None and r.app.name in wanted]:
            self._runners.remove(runner)
            assert runner.app is not None and runner.container_id is not None
            try:
                self.client.api.rename(runner.container_id, runner.app.name + cleanup.KEPT)
                runner.app.name += cleanup.KEPT
            except Exception as exc:  # kept all the same, under its old name
                failed(exc)
            kept.append(runner.app)
        for removal in self._removals:
            try:
                removal.result()
            except Exception as exc:
                failed(exc)
        self._removals.clear()
        for runner in list(self._runners):
            self._runners.remove(runner)
            if self.engine_lost:
                self.left_behind.append(runner.name)
                continue
            try:
                self._close(runner)
            except Exception as exc:  # one failed removal must not leak the rest
                failed(exc)
        for lease in self._leases.values():
            if self.engine_lost:
                self.left_behind.append(lease[:12])
                continue
            try:
                cleanup.remove_container(self.client, lease)
            except Exception as exc:
                failed(exc)
        self._leases.clear()
        self.left_behind += [r.left_behind for r in self._closed if r.left_behind]
        if errors:
            with engine_phase("removing this session's containers", self.endpoint):
                raise errors[0]
        return kept

    def remove_built_images(self) -> list[str]:
        """Remove the images this manager built or reused (they are also the layer cache), after
        :meth:`close`; one line per image says what happened. Never forced: an image that a
        container of another live session uses (its app, or its lease) is kept."""
        import docker.errors

        lines = []
        done: set[str] = set()
        for image in self._images.values():
            if image.id in done or image.prebuilt:
                continue
            done.add(image.id)
            ref = image.tag or image.id
            try:
                answer = self.client.api.remove_image(ref)
            except docker.errors.ImageNotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    lines.append(f"kept image {image.name}: another live session uses it ({exc.explanation})")
                else:
                    lines.append(f"could not remove image {image.name}: {exc.explanation or exc}")
                continue
            deleted = any("Deleted" in item for item in answer or [])
            lines.append(f"removed image {image.name}" if deleted else f"untagged {ref}: the image has other tags")
        return lines

    def __enter__(self) -> AppManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
