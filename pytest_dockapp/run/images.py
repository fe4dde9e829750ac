"""The images of one session: built once per spec (and once across pytest-xdist workers),
reused when nothing they are built from changed, and pinned by a lease until the session ends."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dockapp.builds.image import BuildSpec, ResolvedSpec
from pytest_dockapp.builds.pipeline import Builds
from pytest_dockapp.builds.record import BuildRecord
from pytest_dockapp.core.errors import RegistryError
from pytest_dockapp.engine import cleanup

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
        builds: Builds,
        creation: Callable[[str], AbstractContextManager[None]],
        *,
        shared_dir: Path | None = None,
    ):
        self.client = client
        self.owner = owner
        self._builds = builds
        self._creation = creation
        self.shared_dir = shared_dir
        self._images: dict[str, Image] = {}
        self._leases: dict[str, str] = {}  # image ID -> the lease container that pins it ("" while it is made)
        self._leasing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-lease")
        self._pending: list[Future[bool]] = []
        self._held: list[Image] | None = None  # leases not yet made, while a reused stack is looked for
        self._numbers = itertools.count(1)  # of lease names (two threads make leases)
        self.builds: list[BuildRecord] = []
        self.shared_images: list[Image] = []
        self.prebuilt_images: list[Image] = []

    def known(self, spec: BuildSpec) -> Image | None:
        """``spec``'s image if this session has it already."""
        return self._images.get(spec.key())

    def get(self, spec: BuildSpec) -> Image:
        """``spec``'s image: built once, or its last build reused when nothing changed; leased."""
        resolved = spec.resolve()  # the paths and the key, once
        key = resolved.key
        if key not in self._images:
            image = self._build(resolved) if self.shared_dir is None else self._build_shared(resolved)
            if image.record is not None and image.record.reused and self.shared_dir is None:
                # Nothing was built, and the proof inspected the image just now: its lease is made in
                # the background, as a prebuilt image's (14 ms off a reused run's path here).
                self._lease_later(image)
            elif not self._lease(image):
                image = self._build(resolved, reuse=False)  # removed since it was built: build it again
                self._lease(image)
            self._images[key] = image
        return self._images[key]

    def _lease(self, image: Image, again: bool = False) -> bool:
        """Pin ``image`` with a created, never started, labelled container until :meth:`close`, so
        that no other session's ``--dockapp-remove-images`` can delete it while this session may
        still start it (the engine refuses to remove an image a container uses). False when the
        image is already gone."""
        import docker.errors

        if image.id in self._leases and not again:
            return True
        with self._creation(f"the lease of {image.name}"):
            try:
                created = self.client.api.create_container(
                    image.id,
                    command=["pytest-dockapp-lease"],
                    name=f"dockapp-lease-{self.owner.id[:8]}-{next(self._numbers)}",
                    labels=self.owner.labels("lease"),
                )
            except docker.errors.ImageNotFound:
                return False
            self._leases[image.id] = created["Id"]
        return True

    def _build(self, spec: ResolvedSpec, reuse: bool = True) -> Image:
        record = self._builds.build(spec, reuse=reuse)
        self.builds.append(record)
        return Image(record.image_id, record.tag, record)

    def _build_shared(self, spec: ResolvedSpec) -> Image:
        import docker.errors

        from pytest_dockapp.core.locks import FileLock

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
                image_id = self._builds.pull(ref)
            except RegistryError as exc:
                raise RegistryError(
                    f"image {ref!r} is not on the engine, and its pull failed: {exc.what}",
                    evidence=exc.evidence,
                    hint=f"{exc.hint}; or build or load it first (docker build -t, docker load), or drop "
                    "--dockapp-image to let the plugin build the Dockerfile",
                ) from None
            pulled = time.perf_counter() - began
        image = Image(image_id, ref, prebuilt=True, pull_seconds=pulled)
        # In the background: the session never removes a prebuilt image, so its lease only guards
        # against others, and a stack's start need not wait for it (75-80 ms each here).
        self._lease_later(image)
        self.prebuilt_images.append(image)
        return image

    def _lease_later(self, image: Image) -> None:
        """Lease ``image`` in the background (once), or after :meth:`hold_leases`."""
        if self._held is not None:
            if all(held.id != image.id for held in self._held):
                self._held.append(image)
        elif image.id not in self._leases:
            self._leases[image.id] = ""
            self._pending.append(self._leasing.submit(self._lease, image, True))

    def hold_leases(self) -> None:
        """Make no background lease until :meth:`resume_leases`: a reused stack's running
        containers pin its images, and leases made meanwhile cost more than the attach itself (three
        creates of 25-45 ms on the engine, slowing its other answers, then three removals that the
        session's end waited for)."""
        self._held = []

    def resume_leases(self, pinned: Iterable[Image]) -> None:
        """Make the held leases but of ``pinned`` images (running in containers that outlive the
        session), and end the leases those already have."""
        held, self._held = self._held or [], None
        pinned = list(pinned)
        for image in held:
            if all(p.id != image.id for p in pinned):
                self._lease_later(image)
        self.unlease_later(pinned)

    def unlease_later(self, images: Iterable[Image]) -> None:
        """End the leases of ``images`` in the background now: running containers that outlive the
        session (a reused app or stack) pin them as a lease would, and the session's end then has
        no lease of theirs to wait for (12-20 ms of a reused run here)."""
        for image in images:
            if image.id in self._leases:
                self._pending.append(self._leasing.submit(self._unlease, image.id))

    def _unlease(self, image_id: str) -> bool:
        lease = self._leases.pop(image_id, "")  # made by now: the one lease thread makes them in order
        try:
            if lease:
                cleanup.remove_container(self.client, lease)
        except Exception:
            self._leases[image_id] = lease  # the session's end tries again, and says if that fails
            raise
        return True

    def release(self, failed: Callable[[Exception], None], engine_lost: Callable[[], bool]) -> list[str]:
        """Remove the leases, all at once; each error goes to ``failed``, and when ``engine_lost()``
        no call is made. Returns the leases that could not be removed."""
        for pending in self._pending:
            with contextlib.suppress(Exception):  # not created: the session was ending, or the image went
                pending.result()
        self._pending.clear()
        leases = list(filter(None, self._leases.values()))
        self._leases.clear()
        if not leases or engine_lost():
            return [lease[:12] for lease in leases]

        left: list[str] = []

        def remove(lease: str) -> None:
            try:
                cleanup.remove_container(self.client, lease)
            except Exception as exc:
                left.append(lease[:12])
                failed(exc)

        # All at once: three leases took 12 ms one after the other here.
        with ThreadPoolExecutor(max_workers=min(4, len(leases)), thread_name_prefix="dockapp-unlease") as pool:
            list(pool.map(remove, leases))
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
