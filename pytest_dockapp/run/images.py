"""The images of one session: built once per spec (and once across pytest-xdist workers),
reused when nothing they are built from changed, and pinned by a lease until the session ends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dockapp.builds.image import BuildSpec, ResolvedSpec, build_image
from pytest_dockapp.builds.inputs import INPUTS_LABEL, Inputs, explain_misses
from pytest_dockapp.builds.record import BuildRecord, ProgressCallback
from pytest_dockapp.builds.registry import CacheImport, RegistryCache, pull, push
from pytest_dockapp.builds.reuse import BuildCache, fingerprint
from pytest_dockapp.builds.reuse import Entry as CacheEntry
from pytest_dockapp.core.errors import RegistryError
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import Builder

if TYPE_CHECKING:
    import docker


@dataclass
class Image:
    """A built or prebuilt image, with the record of the build that made it when known."""

    id: str
    tag: str | None
    record: BuildRecord | None = None
    prebuilt: bool = False  # given by the user (--dockapp-image), not built from a spec
    pull_seconds: float = 0.0  # a prebuilt image the session pulled: how long that took

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


class Images:
    """Builds (or reuses) and leases the images of one session; :meth:`release` ends the leases."""

    def __init__(
        self,
        client: docker.DockerClient,
        owner: cleanup.Owner,
        builder: Callable[[], Builder],
        creation: Callable[[str], AbstractContextManager[None]],
        *,
        shared_dir: Path | None = None,
        on_event: ProgressCallback | None = None,
        reuse_unchanged: bool = True,
        build_cache: BuildCache | None = None,
        registry: RegistryCache | None = None,
        on_notice: Callable[[str], None] | None = None,
    ):
        self.client = client
        self.owner = owner
        self._builder = builder  # resolved when the first build needs it
        self._creation = creation
        self.shared_dir = shared_dir
        self.on_event = on_event
        self.reuse_unchanged = reuse_unchanged
        self._build_cache = build_cache or BuildCache()
        self.registry = registry or RegistryCache()
        self.on_notice = on_notice
        #: The one spec the registry settings apply to: one cache ref holds one image.
        self._registry_spec: str | None = None
        self._images: dict[str, Image] = {}
        self._leases: dict[str, str] = {}  # image ID -> the lease container that pins it
        self.builds: list[BuildRecord] = []
        self.shared_images: list[Image] = []
        self.prebuilt_images: list[Image] = []

    @property
    def builder(self) -> Builder:
        return self._builder()

    def known(self, spec: BuildSpec) -> Image | None:
        """``spec``'s image if this session has it already."""
        return self._images.get(spec.key())

    def get(self, spec: BuildSpec) -> Image:
        """``spec``'s image: built once, or its last build reused when nothing changed; leased."""
        resolved = spec.resolve()  # the paths and the key, once
        key = resolved.key
        if key not in self._images:
            image = self._build(resolved) if self.shared_dir is None else self._build_shared(resolved)
            if not self._lease(image):
                image = self._build(resolved, reuse=False)  # removed since it was built: build it again
                self._lease(image)
            self._images[key] = image
        return self._images[key]

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

    def _build(self, spec: ResolvedSpec, reuse: bool = True) -> Image:
        started = time.perf_counter()
        inputs = None
        # A reused image may lack the inputs label a push to the cache ref must carry: build.
        registry = self._registry_for(spec)
        if self.reuse_unchanged and reuse and not registry.cache_to:
            inputs = fingerprint(
                self.client,
                spec.context,
                spec.dockerfile_path,
                spec.dockerfile,
                build_args=spec.spec.build_args,
                target=spec.spec.target,
                builder=self.builder.name,
            )
            last = self._build_cache.lookup(spec.key) if inputs else None
            if last is not None and last.fingerprint == inputs and self._tagged(last.tag, last.image_id):
                try:
                    record = BuildRecord.from_json(last.record, spec.context, spec.dockerfile)
                except (KeyError, TypeError, ValueError):
                    pass  # an entry of an older version, or damaged: build
                else:
                    record.reuse_seconds = time.perf_counter() - started
                    self.builds.append(record)
                    return Image(record.image_id, record.tag, record)
        record = self._build_image(spec, registry) if registry else self._plain_build(spec, {})
        self.builds.append(record)
        if inputs and record.tag:
            self._build_cache.store(spec.key, CacheEntry(inputs, record.image_id, record.tag, record.to_json()))
        return Image(record.image_id, record.tag, record)

    def _plain_build(
        self, spec: ResolvedSpec, labels: Mapping[str, str], cache_from: Sequence[str] = (), inline_cache: bool = False
    ) -> BuildRecord:
        return build_image(
            self.client,
            spec.spec,
            builder=self.builder,
            # Few labels: on the classic builder each label is a build step of its own.
            labels={cleanup.OWNER: cleanup.OWNER_VALUE, **labels},
            on_event=self.on_event,
            cache_from=cache_from,
            inline_cache=inline_cache,
        )

    def _registry_for(self, spec: ResolvedSpec) -> RegistryCache:
        """The registry settings for ``spec``: those of the session for the first spec built, none
        for another (two images pushed to one cache ref would replace each other), with a notice."""
        if not self.registry or self._registry_spec in (None, spec.key):
            self._registry_spec = spec.key if self.registry else None
            return self.registry
        if self.on_notice is not None:
            self.on_notice(
                f"{spec.dockerfile_path} is built without dockapp_cache_from/_to: those "
                "refs hold the session's first image, and one cache ref holds one image"
            )
        return RegistryCache()

    def _build_image(self, spec: ResolvedSpec, cache: RegistryCache) -> BuildRecord:
        """A build with the registry cache: import from ``cache_from`` (pulled first on the classic
        builder), count the hits that came from there, explain a miss by the inputs that differ
        from the cache image's, and push the image with its inputs to ``cache_to``."""
        builder = self.builder.name
        ctx, df_path, df = spec.context, spec.dockerfile_path, spec.dockerfile

        # Labelled on both sides: the classic builder makes the labels one more step, which hits the
        # cache image's only when the labels are the same (measured: a missed LABEL step costs a
        # container commit, 10 s on a 400 MB base over fuse-overlayfs).
        mine = Inputs.collect(self.client, ctx, df_path, df, spec.spec.build_args, builder)
        with CacheImport.prepare(self.client, cache.cache_from, builder, self.on_event, self.on_notice) as imports:
            record = self._plain_build(
                spec,
                {INPUTS_LABEL: mine.encode()},
                cache_from=imports.refs,
                inline_cache=bool(cache.cache_to),
            )
            imports.attach(record)
            if record.misses and imports.refs:
                record.cache_diff = explain_misses(
                    self.client, imports.refs[0], mine, record, df.target_stage(spec.spec.target).index
                )
        record.registry_seconds = imports.seconds
        if cache.cache_to:
            began = time.perf_counter()
            digest = push(self.client, record.image_id, cache.cache_to, self.on_event)
            record.pushed_to = f"{cache.cache_to}@{digest}" if digest else cache.cache_to
            record.registry_seconds += time.perf_counter() - began
        return record

    def _tagged(self, tag: str, image_id: str) -> bool:
        import docker.errors

        try:
            return bool(self.client.api.inspect_image(tag)["Id"] == image_id)
        except docker.errors.ImageNotFound:
            return False

    def _build_shared(self, spec: ResolvedSpec) -> Image:
        import docker.errors
        from filelock import FileLock

        assert self.shared_dir is not None
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        result = self.shared_dir / f"build-{spec.key}.json"
        with FileLock(str(self.shared_dir / f"build-{spec.key}.lock")):
            if result.exists():
                data = json.loads(result.read_text())
                try:
                    self.client.api.inspect_image(data["id"])
                except docker.errors.ImageNotFound:
                    pass  # removed since: build again
                else:
                    record = BuildRecord.from_json(data["record"], spec.context, spec.dockerfile)
                    image = Image(data["id"], data["tag"], record)
                    self.shared_images.append(image)
                    return image
            image = self._build(spec)
            assert image.record is not None
            result.write_text(json.dumps({"id": image.id, "tag": image.tag, "record": image.record.to_json()}))
            return image

    def prebuilt(self, ref: str) -> Image:
        """An image that was built elsewhere (an earlier CI stage): the engine's, else pulled (a
        digest exactly); a failed pull is a :class:`RegistryError` naming the ref and the registry."""
        import docker.errors

        pulled = 0.0
        try:
            image_id = str(self.client.api.inspect_image(ref)["Id"])
        except docker.errors.ImageNotFound:
            began = time.perf_counter()
            try:
                image_id = pull(self.client, ref, self.on_event)
            except RegistryError as exc:
                raise RegistryError(
                    f"image {ref!r} is not on the engine, and its pull failed: {exc.what}",
                    evidence=exc.evidence,
                    hint=f"{exc.hint}; or build or load it first (docker build -t, docker load), or drop "
                    "--dockapp-image to let the plugin build the Dockerfile",
                ) from None
            pulled = time.perf_counter() - began
        image = Image(image_id, ref, prebuilt=True, pull_seconds=pulled)
        self._lease(image)
        self.prebuilt_images.append(image)
        return image

    def release(self, failed: Callable[[Exception], None], engine_lost: Callable[[], bool]) -> list[str]:
        """Remove the leases; each error goes to ``failed``, and once ``engine_lost()`` no
        further call is made. Returns the leases that could not be removed."""
        left = []
        for lease in self._leases.values():
            if engine_lost():
                left.append(lease[:12])
                continue
            try:
                cleanup.remove_container(self.client, lease)
            except Exception as exc:
                failed(exc)
        self._leases.clear()
        return left

    def remove_built(self) -> list[str]:
        """Remove the images this session built or reused (they are also the layer cache), after
        the session's apps are removed; one line per image says what happened. Never forced: an image that a
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
