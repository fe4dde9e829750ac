"""A registry as the layer cache between CI runners, and as the source of prebuilt images: the
cache refs a build imports and the one it exports to, pulls and pushes through the engine (the
engine reaches the registry, with the credentials of the docker config, as the CLI's would).

Image references are checked as the engine parses them (distribution's ``reference`` grammar),
so that a bad ``--dockapp-image`` or cache ref is a usage error at start, not an engine error
later that blames the network::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ["/" path-component]*
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dockapp.builds.record import BuildEvent, BuildRecord, BuildStep, ProgressCallback
from pytest_dockapp.core.errors import ConfigurationError, RegistryError

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class RegistryCache:
    """The refs a build imports its layer cache from, and the ref it pushes its image to."""

    cache_from: tuple[str, ...] = ()
    cache_to: str | None = None

    def __bool__(self) -> bool:
        return bool(self.cache_from or self.cache_to)


def registry_of(ref: str) -> str:
    """The registry host of an image ref, as the engine reads it (a first part without a dot, a
    colon or capitals that is not localhost: Docker Hub)."""
    first, slash, rest = ref.partition("/")
    if slash and _has_domain(first, rest):
        return first
    return "Docker Hub"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``(repository, tag or digest)``: the tag after the last colon that is not part of a
    host:port, or the digest after ``@``."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        head, colon, tag = repo.rpartition(":")
        return (head if colon and "/" not in tag else repo), digest  # a digest wins over a tag
    head, colon, tag = ref.rpartition(":")
    if colon and "/" not in tag:
        return head, tag
    return ref, None


_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"({_PATH}(?:/{_PATH})*)(?::({_TAG}))?(?:@({_DIGEST}))?")
RULE = (
    "a reference is [host[:port]/]name[:tag][@sha256:digest]: the name in lowercase letters, digits and . _ -, "
    "separated by /; a tag of at most 128 letters, digits, _ . - (no /: write feature-x for feature/x)"
)


def _has_domain(first: str, rest: str) -> bool:
    """Whether the engine reads ``first`` as a registry host (docker's splitDockerDomain)."""
    return bool(rest) and ("." in first or ":" in first or first == "localhost" or first.lower() != first)


def check_reference(value: str, *, tagged: bool = False) -> str:
    """``value`` as given, when the engine would accept it as an image reference; ``tagged``: a
    push target, which needs a tag or none (never a digest). Else a :class:`ConfigurationError`."""
    text = value.strip()
    first, slash, rest = text.partition("/")
    domain_ok = True
    if slash and _has_domain(first, rest):
        domain_ok = re.fullmatch(_DOMAIN, first) is not None
        body = rest
    else:
        body = text
    match = _REFERENCE.fullmatch(body)
    if not text or not domain_ok or match is None or len(match.group(1)) > 255:
        raise ConfigurationError(f"{value!r} is not a valid image reference", hint=RULE)
    if tagged and match.group(3):
        raise ConfigurationError(f"{value!r} names a digest; a push needs a tag", hint="e.g. registry:5000/app:cache")
    return text


class _NoSuchImage(RegistryError):
    """The registry answered, and has no such image (for a cache ref: not pushed yet)."""


def _failure(verb: str, ref: str, exc: Exception) -> RegistryError:
    """One clear error for a failed registry call: missing, refused credentials, or unreachable."""
    import docker.errors

    status = exc.status_code if isinstance(exc, docker.errors.APIError) else None
    text = str(getattr(exc, "explanation", None) or exc)
    low = text.lower()
    where = registry_of(ref)
    hint = (
        f"log in to {where} as for the docker CLI (docker login {where}, or a credential helper in the docker "
        "config this process reads: $DOCKER_CONFIG/config.json, else ~/.docker/config.json)"
    )
    if "no basic auth credentials" in low:
        return RegistryError(
            f"{verb} {ref}: {where} wants a login, and the docker config has no credentials for it",
            evidence=text,
            hint=hint,
        )
    if status in (401, 403) or any(w in low for w in ("unauthorized", "denied", "authentication required")):
        return RegistryError(f"{verb} {ref}: {where} refused the credentials", evidence=text, hint=hint)
    refused = re.search(r"\b(405|501)\b|method not allowed|unsupported", low)
    if verb.startswith("push") and (status in (405, 501) or refused):
        quoted = re.search(r'"([^"]+?)(?:\\n)?"\s*$', text)
        why = f"HTTP {refused.group(1) if refused and refused.group(1) else status or 405}" + (
            f" {quoted.group(1)}" if quoted else ""
        )
        return RegistryError(
            f"{verb} {ref}: {where} refused the push ({why}): it answers, but takes no writes",
            evidence=text,
            hint=f"{where} is read-only (a mirror, or a registry in maintenance mode): push the cache to a registry "
            "that takes writes, or drop dockapp_cache_to on the runners that only read (dockapp_cache_from)",
        )
    if status == 404 or "manifest unknown" in low or "not found" in low:
        return _NoSuchImage(
            f"{verb} {ref}: {where} has no such image",
            evidence=text,
            hint="check the ref (the repository, the tag, or the digest after @), and that the stage which pushes "
            "it ran first",
        )
    return RegistryError(
        f"{verb} {ref}: the engine could not reach {where}",
        evidence=text,
        hint=f"check that {where} is up and reachable from the engine's host (the engine, not this process, "
        "talks to it); a registry without TLS must be on loopback or in the engine's insecure-registries",
    )


def exists(client: docker.DockerClient, ref: str) -> bool:
    """Whether the registry has ``ref`` (asked through the engine: its network, its view). False
    when it does not; a :class:`RegistryError` when the registry cannot say."""
    import docker.errors

    try:
        client.api.inspect_distribution(ref)
    except docker.errors.APIError as exc:
        error = _failure("cache image", ref, exc)
        if isinstance(error, _NoSuchImage):
            return False
        raise error from None
    return True


def pull(client: docker.DockerClient, ref: str, on_event: ProgressCallback | None = None) -> str:
    """Pull ``ref`` (a digest is pulled exactly) with progress; the pulled image's ID."""
    import docker.errors

    repo, tag = split_ref(ref)
    try:
        stream = client.api.pull(repo, tag=tag, stream=True, decode=True)
        _follow(stream, f"pulling {ref}", on_event)
        return str(client.api.inspect_image(f"{repo}@{tag}" if tag and tag.startswith("sha256:") else ref)["Id"])
    except (docker.errors.APIError, _StreamError) as exc:
        raise _failure("pull of", ref, exc) from None


def push(client: docker.DockerClient, image_id: str, ref: str, on_event: ProgressCallback | None = None) -> str:
    """Tag ``image_id`` as ``ref``, push it with progress, and drop that tag again (the engine
    keeps what it had); the pushed manifest's digest."""
    import docker.errors

    repo, tag = split_ref(ref)
    if tag is not None and tag.startswith("sha256:"):
        raise RegistryError(
            f"cache_to {ref} is a digest", hint="push to a tag: dockapp_cache_to = <registry>/<repository>:<tag>"
        )
    client.api.tag(image_id, repo, tag or "latest")
    try:
        aux = _follow(client.api.push(repo, tag=tag or "latest", stream=True, decode=True), f"pushing {ref}", on_event)
    except (docker.errors.APIError, _StreamError) as exc:
        raise _failure("push to", ref, exc) from None
    finally:
        with contextlib.suppress(docker.errors.APIError):  # moved by another process meanwhile: not ours to remove
            client.api.remove_image(f"{repo}:{tag or 'latest'}", noprune=True)
    return str(aux.get("Digest", ""))


class _StreamError(Exception):
    """An error the engine reported inside a pull or push stream (HTTP 200 all the same)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.explanation = text


def _follow(stream: Iterable[Mapping[str, Any]], what: str, on_event: ProgressCallback | None) -> dict[str, Any]:
    """Read a pull or push stream to its end, as progress; the last ``aux`` object it carried."""
    began = time.perf_counter()
    aux: dict[str, Any] = {}
    emit: Callable[[BuildEvent], None] = on_event or (lambda event: None)
    emit(BuildEvent(what, "registry", 0.0))
    for chunk in stream:
        if "error" in chunk:
            raise _StreamError(str(chunk.get("error") or chunk))
        if isinstance(chunk.get("aux"), Mapping):
            aux = dict(chunk["aux"])
        status = " ".join(str(chunk.get(k, "")) for k in ("id", "status", "progress") if chunk.get(k))
        if status:
            emit(BuildEvent(what, "registry", time.perf_counter() - began, status))
    return aux


@dataclass
class CacheImport:
    """The cache refs of one build, made usable for its builder: refs the registry has (a missing
    one is a cold build, with a notice), pulled first for the classic builder, which takes layers
    only from images on the engine. A context manager: leaving it untags what it pulled."""

    client: docker.DockerClient
    refs: list[str]
    #: classic: the short IDs of every image on the engine before the build (intermediate ones
    #: too): a hit whose image is not among them was made from a cache image's layers.
    #: BuildKit: the layer diff IDs of every image on the engine before the build.
    known_before: set[str]
    pulled: list[str]
    seconds: float = 0.0

    @classmethod
    def prepare(
        cls,
        client: docker.DockerClient,
        refs: Iterable[str],
        builder: str,
        on_event: ProgressCallback | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> CacheImport:
        import docker.errors

        began = time.perf_counter()
        found: list[str] = []
        pulled: list[str] = []
        for ref in refs:
            if not exists(client, ref):
                if notice is not None:
                    notice(f"cache image {ref} is not in the registry yet: a cold build (the push to it makes one)")
                continue
            found.append(ref)
            if builder == "classic":
                try:
                    client.api.inspect_image(ref)
                except docker.errors.ImageNotFound:
                    pulled.append(ref)
                pull(client, ref, on_event)
        known: set[str] = set()
        if found and builder == "classic":
            known = {str(i).split(":")[-1][:12] for i in client.api.images(all=True, quiet=True)}
        elif found:
            known = _engine_layers(client)
        return cls(client, found, known, pulled, time.perf_counter() - began)

    def __enter__(self) -> CacheImport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def attach(self, record: BuildRecord) -> None:
        """Tell ``record``, built with :attr:`refs`, which refs it imported and how many hits came
        from there."""
        record.cache_from = list(self.refs)
        record.registry_hits = self.registry_hits(record.builder, record.image_id, record.steps, record.log)

    def registry_hits(self, builder: str, image_id: str, steps: list[BuildStep], log: list[str]) -> int:
        """How many of the build's cache hits came from the registry rather than this engine's own
        cache. Classic: the hits whose image was not on the engine before the build (the builder
        made it from a cache image's layer and history). BuildKit names no source per step, and
        pulls lazily: the layers of the built image that no image on the engine had before, less
        the layers its missed steps made, are the hits' layers that came from the registry."""
        hits = [s for s in steps if s.cacheable and s.cached]
        if not self.refs or not hits:
            return 0
        if builder == "classic":
            return sum(1 for s in hits if _classic_result(s, log) not in self.known_before)
        new = set(self.client.api.inspect_image(image_id)["RootFS"].get("Layers") or []) - self.known_before
        made = sum(1 for s in steps if s.cacheable and s.cached is False and s.keyword in ("RUN", "COPY", "ADD"))
        return max(0, min(len(hits), len(new) - made))

    def release(self) -> None:
        """Untag the cache images pulled for this build (the built image keeps the layers it took)."""
        import docker.errors

        for ref in self.pulled:
            with contextlib.suppress(docker.errors.APIError):  # another session uses it meanwhile: not ours to remove
                self.client.api.remove_image(ref, noprune=True)
        self.pulled.clear()


def _engine_layers(client: docker.DockerClient) -> set[str]:
    """The layer diff IDs of every image on the engine (one inspect per image: 2 ms each here)."""
    import docker.errors

    layers: set[str] = set()
    for image in client.api.images(quiet=True):
        try:
            layers.update(client.api.inspect_image(image)["RootFS"].get("Layers") or [])
        except docker.errors.APIError:
            continue  # removed meanwhile
    return layers


def _classic_result(step: BuildStep, log: list[str]) -> str:
    """The image ID a classic step resulted in: the `` ---> <id>`` line after its ``Step N/M``."""
    import re

    head = re.compile(rf"^Step {step.index}/\d+ : ")
    inside = False
    for line in log:
        text = line.rstrip("\n")
        if head.match(text):
            inside = True
        elif inside and text.startswith("Step "):
            return ""
        elif inside:
            found = re.match(r"^ ---> ([0-9a-f]{12})$", text)
            if found:
                return found.group(1)
    return ""
