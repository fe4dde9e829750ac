"""The inputs of a build (context files, build args, base images, builder), shipped as a label
of the image pushed to the cache ref, and compared on another runner whose build missed: a
miss across machines then names what differs (a file mode, a base image, the builder...).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.builds.context import context_files
from pytest_dockapp.builds.dockerfile import Dockerfile, consumed_files
from pytest_dockapp.builds.record import BuildRecord
from pytest_dockapp.core.redact import looks_secret

if TYPE_CHECKING:
    import docker

#: The label of a pushed cache image that holds its build's inputs (gzip, then base64).
INPUTS_LABEL = "org.pytest-dockapp.inputs"
#: What the inputs record for a secret-looking build arg instead of its value's hash.
SECRET = "secret: not recorded"
#: At most this many differing inputs are listed; the rest are counted.
SHOWN = 12


@dataclass
class Inputs:
    """What one build read: per context file a step reads ``[mode, size, sha256]``; per build arg the SHA-256
    of its value (:data:`SECRET` for a secret-looking one); per base image its ID; the builder."""

    builder: str
    files: dict[str, list[Any]] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def collect(
        cls,
        client: docker.DockerClient,
        context: Path,
        dockerfile: Path,
        df: Dockerfile,
        build_args: Mapping[str, str],
        builder: str,
    ) -> Inputs:
        import docker.errors

        files: dict[str, list[Any]] = {}
        sent = context_files(context, dockerfile, builder)
        # Only what a step reads (COPY/ADD sources, RUN bind mounts): a file no step reads cannot
        # make a step miss, and a runner's own files (.pytest_cache) would only be noise.
        names = sorted({rel for ins in df.steps() for rel in consumed_files(ins, sent, dict(build_args))})
        if not dockerfile.is_relative_to(context):
            names.append(str(dockerfile))  # a Dockerfile outside the context is read all the same
        for rel in names:
            path = context / rel
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                digest = hashlib.sha256(os.readlink(path).encode()).hexdigest()
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[rel] = [stat.S_IMODE(st.st_mode), st.st_size, digest]
        bases = {}
        for _, image in df.base_images(build_args):
            try:
                bases[image] = str(client.api.inspect_image(image)["Id"])
            except docker.errors.APIError:
                bases[image] = "not on the engine"
        # A secret-looking arg's value is not recorded even as a hash: the label goes to a registry,
        # and an unsalted hash of a short secret can be searched for.
        args = {k: SECRET if looks_secret(k) else hashlib.sha256(v.encode()).hexdigest() for k, v in build_args.items()}
        return cls(builder, files, args, bases)

    def encode(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return base64.b64encode(gzip.compress(raw, mtime=0)).decode()

    @classmethod
    def decode(cls, text: str) -> Inputs | None:
        """The inputs a label holds, or None when it is damaged or of another version."""
        try:
            data = json.loads(gzip.decompress(base64.b64decode(text)))
            return cls(str(data["builder"]), dict(data["files"]), dict(data["args"]), dict(data["bases"]))
        except (ValueError, KeyError, TypeError, OSError):
            return None

    def diff(self, cache: Inputs) -> list[str]:
        """One line per input that differs, ``here`` against ``cache``: the builder, base images,
        build args, then files (at most :data:`SHOWN` lines in all)."""
        out = []
        if self.builder != cache.builder:
            out.append(
                f"builder {self.builder} here, {cache.builder} made the cache (neither builder reads the other's "
                "cache: build with the same one on both runners)"
            )
        for image in sorted(self.bases.keys() | cache.bases.keys()):
            mine, theirs = self.bases.get(image), cache.bases.get(image)
            if mine != theirs:
                out.append(f"base image {image}: {_short(mine)} here, {_short(theirs)} in the cache")
        for name in sorted(self.args.keys() | cache.args.keys()):
            mine, theirs = self.args.get(name), cache.args.get(name)
            if mine != theirs:
                out.append(f"build arg {name}: {_arg(mine)} here, {_arg(theirs)} in the cache")
        out += _file_lines(self.files, cache.files)
        if len(out) > SHOWN:
            out = [*out[:SHOWN], f"and {len(out) - SHOWN} more"]
        return out


def _short(image_id: str | None) -> str:
    if image_id is None:
        return "not used"
    return image_id[:19] + "…" if image_id.startswith("sha256:") else image_id


def _arg(digest: str | None) -> str:
    if digest is None:
        return "not passed (the Dockerfile's default)"
    return "passed (a secret: its value is not recorded)" if digest == SECRET else f"value sha256:{digest[:12]}…"


def _file_lines(here: Mapping[str, list[Any]], cache: Mapping[str, list[Any]]) -> list[str]:
    out = []
    for rel in sorted(here.keys() | cache.keys()):
        mine, theirs = here.get(rel), cache.get(rel)
        if mine == theirs:
            continue
        if mine is None:
            out.append(f"{rel}: in the cache's context, not in this one")
        elif theirs is None:
            out.append(f"{rel}: in this context, not in the cache's")
        elif mine[2] != theirs[2]:
            out.append(
                f"{rel}: content differs ({mine[1]} bytes, sha256:{mine[2][:12]}… here; {theirs[1]} bytes, "
                f"sha256:{theirs[2][:12]}… in the cache)"
            )
        elif mine[0] != theirs[0]:
            cause = _mode_cause(mine[0], theirs[0])
            out.append(f"{rel}: mode {mine[0]:04o} here, {theirs[0]:04o} in the cache image ({cause})")
    return out


def _mode_cause(mine: int, theirs: int) -> str:
    changed = mine ^ theirs
    if changed & 0o111:
        return "the executable bit differs: a chmod, or a checkout that does not keep it (git core.fileMode)"
    if changed & 0o022:
        return "umask differs between runners: set one umask before the checkout, or COPY --chmod"
    return "a chmod between the two builds"


def cache_inputs(client: docker.DockerClient, ref: str) -> Inputs | None:
    """The inputs label of the cache image ``ref``, pulled if the engine does not have it (then
    removed again: it was not ours); None when the image has no such label."""
    import docker.errors

    from pytest_dockapp.builds.registry import pull

    had = True
    try:
        attrs = client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        had = False
        pull(client, ref)
        attrs = client.api.inspect_image(ref)
    try:
        text = ((attrs.get("Config") or {}).get("Labels") or {}).get(INPUTS_LABEL)
        return Inputs.decode(text) if text else None
    finally:
        if not had:
            with contextlib.suppress(docker.errors.APIError):  # in use meanwhile: another session's to remove
                client.api.remove_image(ref)


def explain_misses(
    client: docker.DockerClient, ref: str, here: Inputs, record: BuildRecord, final_stage: int
) -> list[str]:
    """Why ``record``'s misses missed the cache image ``ref``: the inputs that differ from the
    build that pushed it, and, on the classic builder, the steps of stages the image does not
    carry (its ``--cache-from`` has only the pushed image's own chain of layers)."""
    theirs = cache_inputs(client, ref)
    if theirs is None:
        lines = [f"{ref} carries no record of its inputs (it was not pushed by dockapp_cache_to)"]
    else:
        lines = here.diff(theirs)
    if record.builder == "classic":
        other = sorted({s.stage or "?" for s in record.misses if s.instruction and s.instruction.stage != final_stage})
        if other:
            lines.append(
                f"stage {', '.join(other)}: not in the cache image, which holds only the final stage's layers on the "
                "classic builder (BuildKit's inline cache covers every stage the image needs)"
            )
    return lines or ["every recorded input (files, build args, base images, builder) is the same as the cache's"]
