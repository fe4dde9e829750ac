"""An image's layers, walked as dive walks them: which bytes a later layer deletes or
overwrites (wasted: they are still shipped in the layer that wrote them), and which package
caches are left in the final image.

dive (``filetree.Efficiency``) counts every copy of a path that occurs in two layers, the copy
that survives included. Here only the copies that no longer show in the final image count:
that is what a later layer deletes or overwrites, and what the fix removes.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

#: Folders where package managers keep caches an image does not need, and the tool's name.
CACHES = {
    "var/lib/apt/lists": "apt",
    "var/cache/apt/archives": "apt",
    "root/.cache/pip": "pip",
    "root/.npm": "npm",
    "usr/local/share/.cache/yarn": "yarn",
}


@dataclass
class Layer:
    index: int
    size: int = 0  # bytes of regular files the layer holds
    wasted: int = 0  # of those, what a later layer deletes or overwrites
    created_by: str = ""
    #: Bytes under each of :data:`CACHES` that the final image still holds, from this layer.
    caches: dict[str, int] = field(default_factory=dict)


@dataclass
class LayerWalk:
    layers: list[Layer]

    @property
    def wasted(self) -> int:
        return sum(layer.wasted for layer in self.layers)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def _entries(layer: IO[bytes]) -> Iterator[tuple[str, str, int]]:
    """``(kind, path, size)`` of a layer tar: kind is file, dir, whiteout or opaque."""
    with tarfile.open(fileobj=layer, mode="r|") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            path = posixpath.normpath(name.lstrip("/") or ".")
            folder, name = posixpath.split(path)
            if name == ".wh..wh..opq":
                yield "opaque", folder, 0
            elif name.startswith(".wh."):
                yield "whiteout", posixpath.join(folder, name[len(".wh.") :]), 0
            elif member.isdir():
                yield "dir", path, 0
            else:
                yield "file", path, member.size if member.isreg() else 0


def walk(layers: Iterable[Iterable[tuple[str, str, int]]], created_by: list[str] | None = None) -> LayerWalk:
    """Apply the layers in order, as the storage driver does, and count what each loses."""
    out: list[Layer] = []
    live: dict[str, tuple[int, int]] = {}  # path -> (size, index of the layer that wrote it)
    dirs: set[str] = set()  # folders seen: only a whiteout of one needs a scan of what is under it

    def drop(path: str, under: bool) -> None:
        gone = [p for p in live if p.startswith(path + "/")] if under else []
        if not under and path in live:
            gone.append(path)
        for p in gone:
            size, owner = live.pop(p)
            out[owner].wasted += size

    for index, entries in enumerate(layers):
        out.append(Layer(index, created_by=(created_by or [])[index] if created_by and index < len(created_by) else ""))
        for kind, path, size in entries:
            if kind == "opaque":
                drop(path, under=True)
            elif kind == "whiteout":
                drop(path, under=False)
                if path in dirs:
                    drop(path, under=True)
            elif kind == "dir":
                dirs.add(path)
            elif kind == "file":
                parent = posixpath.dirname(path)
                while parent not in dirs and parent not in ("", ".", "/"):
                    dirs.add(parent)
                    parent = posixpath.dirname(parent)
                drop(path, under=False)  # overwritten
                live[path] = (size, index)
                out[index].size += size
    for path, (size, owner) in live.items():
        for prefix, _tool in CACHES.items():
            if path.startswith(prefix + "/") and size:
                caches = out[owner].caches
                caches[prefix] = caches.get(prefix, 0) + size
    return LayerWalk(out)


class _Chunks(io.RawIOBase):
    """The engine's ``docker save`` chunks as a raw stream (buffered for tarfile's small reads)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def walk_image(client: docker.DockerClient, image_id: str) -> LayerWalk:
    """Stream the image out of the engine (``docker save``) and walk its layers; nothing is
    written to disk. A 400 MB image takes a few seconds, so budgets ask for it only when they
    need it (a ``wasted`` budget, or a size budget that failed)."""
    from pytest_dockapp.core.errors import DockappError

    by_name: dict[str, list[tuple[str, str, int]]] = {}
    manifest: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    stream = io.BufferedReader(_Chunks(client.api.get_image(image_id, chunk_size=1 << 20)), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as outer:
        for member in outer:
            if not member.isfile():
                continue
            data = outer.extractfile(member)
            if data is None:
                continue
            if member.name.endswith("layer.tar") or member.name.startswith("blobs/"):
                # Docker 25+ exports an OCI layout: a blob is a layer or a JSON document, and only
                # the name says which in the manifest read last. A small blob is read whole, so that
                # a failed JSON parse can still read it as a layer (a stream cannot be rewound).
                source: IO[bytes] = data
                if member.size < 1 << 20:
                    raw = data.read()
                    try:
                        configs[member.name] = json.loads(raw)
                        continue
                    except ValueError:
                        source = io.BytesIO(raw)
                by_name[member.name] = list(_entries(source))
            elif member.name == "manifest.json":
                manifest = json.loads(data.read())
            elif member.name.endswith(".json"):
                configs[member.name] = json.loads(data.read())
    if not manifest:
        raise DockappError(
            f"the engine's export of image {image_id} has no manifest.json",
            hint="the engine's `docker save` format is not one this plugin reads; drop the wasted budget for it",
        )
    config = configs.get(manifest[0]["Config"], {})
    history = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    return walk([by_name.get(name, []) for name in manifest[0]["Layers"]], history)


def human(size: float) -> str:
    """Bytes as ``docker images`` says them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
