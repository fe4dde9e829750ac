"""The one entry point from a resolved build spec to an image: the last build reused when
nothing it is built from changed, else a build, with the registry around it (the cache imported
from ``cache_from``, the image pushed with its inputs to ``cache_to``); and prebuilt images pulled.

>>> builds = Builds(client, lambda: builder, BuildPolicy(registry=RegistryCache(("reg/app:cache",))))
>>> record = builds.build(BuildSpec("app").resolve())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dockapp.builds.image import ResolvedSpec, build_image
from pytest_dockapp.builds.record import BuildRecord, ProgressCallback
from pytest_dockapp.builds.registry import CacheImport, RegistryCache, pull, push
from pytest_dockapp.builds.reuse import BuildCache, Entry, fingerprint
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import Builder

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class BuildPolicy:
    """What a session decides once for all its builds."""

    #: Reuse the last build of a spec when nothing it is built from changed (off: ``--dockapp-rebuild``).
    reuse_unchanged: bool = True
    #: The registry as the layer cache; it applies to the first spec built only (one cache ref
    #: holds one image).
    registry: RegistryCache = field(default_factory=RegistryCache)


class Builds:
    """Turns resolved specs into built or reused images, and pulls prebuilt ones."""

    def __init__(
        self,
        client: docker.DockerClient,
        builder: Callable[[], Builder],
        policy: BuildPolicy | None = None,
        *,
        cache: BuildCache | None = None,
        on_event: ProgressCallback | None = None,
        on_notice: Callable[[str], None] | None = None,
    ):
        self._client = client
        self._builder = builder  # resolved when the first build needs it
        self._policy = policy or BuildPolicy()
        self._cache = cache or BuildCache()
        self._on_event = on_event
        self._on_notice = on_notice
        self._registry_spec: str | None = None  # the one spec the registry settings apply to

    def build(self, spec: ResolvedSpec, *, reuse: bool = True) -> BuildRecord:
        """``spec``'s image: its last build when its inputs are unchanged and its tag still names
        it (``reuse_seconds`` set), else built now (through the registry when one is set)."""
        started = time.perf_counter()
        inputs = None
        registry = self._registry_for(spec)
        # A reused image may lack the inputs label a push to the cache ref must carry: build.
        if self._policy.reuse_unchanged and reuse and not registry.cache_to:
            inputs = fingerprint(
                self._client,
                spec.context,
                spec.dockerfile_path,
                spec.dockerfile,
                build_args=spec.spec.build_args,
                target=spec.spec.target,
                builder=self._builder().name,
            )
            last = self._cache.lookup(spec.key) if inputs else None
            if last is not None and last.fingerprint == inputs and self._tagged(last.tag, last.image_id):
                try:
                    record = BuildRecord.from_json(last.record, spec.context, spec.dockerfile)
                except (KeyError, TypeError, ValueError):
                    pass  # an entry of an older version, or damaged: build
                else:
                    record.reuse_seconds = time.perf_counter() - started
                    return record
        record = self._through_registry(spec, registry) if registry else self._plain(spec, {})
        if inputs and record.tag:
            self._cache.store(spec.key, Entry(inputs, record.image_id, record.tag, record.to_json()))
        return record

    def pull(self, ref: str) -> str:
        """The ID of ``ref`` pulled through the engine (a :class:`RegistryError` when it fails)."""
        return pull(self._client, ref, self._on_event)

    def _plain(
        self, spec: ResolvedSpec, labels: Mapping[str, str], cache_from: Sequence[str] = (), inline_cache: bool = False
    ) -> BuildRecord:
        return build_image(
            self._client,
            spec,
            builder=self._builder(),
            # Few labels: on the classic builder each label is a build step of its own.
            labels={cleanup.OWNER: cleanup.OWNER_VALUE, **labels},
            on_event=self._on_event,
            cache_from=cache_from,
            inline_cache=inline_cache,
        )

    def _registry_for(self, spec: ResolvedSpec) -> RegistryCache:
        """The registry settings for ``spec``: its own refs when it has them; else the policy's for
        the first spec built, none for another (two images pushed to one cache ref would replace
        each other), with a notice."""
        if spec.spec.registry is not None:
            return spec.spec.registry  # the spec's own refs (a compose service's)
        registry = self._policy.registry
        if not registry or self._registry_spec in (None, spec.key):
            self._registry_spec = spec.key if registry else None
            return registry
        if self._on_notice is not None:
            self._on_notice(
                f"{spec.dockerfile_path} is built without dockapp_cache_from/_to: those "
                "refs hold the session's first image, and one cache ref holds one image"
            )
        return RegistryCache()

    def _through_registry(self, spec: ResolvedSpec, cache: RegistryCache) -> BuildRecord:
        """A build with the registry cache: import from ``cache_from`` (pulled first on the classic
        builder), count the hits that came from there, explain a miss by the inputs that differ
        from the cache image's, and push the image with its inputs to ``cache_to``."""
        from pytest_dockapp.builds.inputs import INPUTS_LABEL, Inputs, explain_misses  # only through a registry

        builder = self._builder().name
        # Labelled on both sides: the classic builder makes the labels one more step, which hits the
        # cache image's only when the labels are the same (measured: a missed LABEL step costs a
        # container commit, 10 s on a 400 MB base over fuse-overlayfs).
        ctx, df_path, df = spec.context, spec.dockerfile_path, spec.dockerfile
        mine = Inputs.collect(self._client, ctx, df_path, df, spec.spec.build_args, builder)
        with CacheImport.prepare(self._client, cache.cache_from, builder, self._on_event, self._on_notice) as imports:
            record = self._plain(spec, {INPUTS_LABEL: mine.encode()}, imports.refs, inline_cache=bool(cache.cache_to))
            imports.attach(record)
            if record.misses and imports.refs:
                stage = spec.dockerfile.target_stage(spec.spec.target).index
                record.cache_diff = explain_misses(self._client, imports.refs[0], mine, record, stage)
        record.registry_seconds = imports.seconds
        if cache.cache_to:
            began = time.perf_counter()
            digest = push(self._client, record.image_id, cache.cache_to, self._on_event)
            record.pushed_to = f"{cache.cache_to}@{digest}" if digest else cache.cache_to
            record.registry_seconds += time.perf_counter() - began
        return record

    def _tagged(self, tag: str, image_id: str) -> bool:
        import docker.errors

        try:
            return bool(self._client.api.inspect_image(tag)["Id"] == image_id)
        except docker.errors.ImageNotFound:
            return False
