"""One service of a compose file, read as the Compose Specification says: each key checked for
its shape and its group (see :mod:`pytest_dockapp.services.keys`), and turned into what the
stack runs: a :class:`ServiceDef`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dockapp.builds.registry import RegistryCache, check_reference
from pytest_dockapp.core import state_files
from pytest_dockapp.core.errors import ComposeError, ConfigurationError
from pytest_dockapp.run.options import InjectedFile
from pytest_dockapp.services.interpolate import read_env_file
from pytest_dockapp.services.keys import ACCEPTED, REFUSED, SERVICE_KEYS, EngineArgs, engine_args, str_map
from pytest_dockapp.services.shapes import SERVICE_SHAPES, check_shapes

_BUILD = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "target",
    "secrets",
    "cache_from",
    "cache_to",
    "platforms",
    "ssh",
}
#: Build keys read but not applied, and why (README: the build keys).
_BUILD_ACCEPTED = {
    "labels": "image labels change nothing a test can see",
    "tags": "the plugin tags its builds itself",
    "pull": "a base image not on the engine is pulled",
    "no_cache": "an unchanged build is reused; --dockapp-rebuild builds anew",
    "network": "build steps use the builder's default network",
}
_BUILD_REFUSED = {
    "additional_contexts": "one context per build: COPY --from an image or stage instead",
}
#: Caches of buildx's exporters, which these builders lack: a build without them makes the same
#: image, only perhaps slower, so they are read and not applied (a registry ref is used).
_BUILDX_CACHES = {"local", "gha", "s3", "azblob", "inline"}
_HEALTH = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@dataclass(frozen=True)
class Mount:
    kind: str  # volume | bind | tmpfs | anonymous
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class PortSpec:
    container: int
    protocol: str = "tcp"
    host: int | None = None  # a fixed host port, honoured only with dockapp_compose_host_ports


@dataclass(frozen=True)
class Attachment:
    """How a service joins one network: its aliases there and its fixed addresses, if any."""

    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None
    ipv6_address: str | None = None


@dataclass
class BuildDef:
    context: Path
    dockerfile: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)  # id -> file path or environment variable name
    #: The service's own registry cache refs (``cache_from``, ``cache_to``); None: the session's.
    registry: RegistryCache | None = None
    #: ``platforms``: the one the service runs must be among them, and only that one is built.
    platforms: tuple[str, ...] = ()
    #: ``ssh``: what BuildKit's ``RUN --mount=type=ssh`` reaches, ``{id: key or agent socket}``;
    #: ``""`` is the agent of ``SSH_AUTH_SOCK``.
    ssh: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceDef:
    """One service as the plugin runs it."""

    name: str
    build: BuildDef | None = None
    image: str | None = None
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    init: bool | None = None
    tmpfs: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    ports: list[PortSpec] = field(default_factory=list)
    expose: list[PortSpec] = field(default_factory=list)
    depends_on: dict[str, str] = field(default_factory=dict)  # name -> condition
    healthcheck: dict[str, Any] | None = None  # the engine API's form; {"test": ["NONE"]} disables
    #: Names it has on every network it joins (its ``container_name``).
    aliases: list[str] = field(default_factory=list)
    #: The stack networks it joins, in the order compose joins them.
    networks: dict[str, Attachment] = field(default_factory=dict)
    network_mode: str | None = None  # none | host | bridge | service:<name>
    #: How dockapp_clean puts it back as seeded (``x-dockapp: {state: ...}``); None: by its image.
    state: str | None = None
    #: ``links``: (the linked service, the alias it gets).
    links: list[tuple[str, str]] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    #: Files copied into the container before it starts: its secrets and configs.
    files: list[InjectedFile] = field(default_factory=list)
    #: What its engine keys (limits, capabilities, DNS...) add to the create call.
    engine: EngineArgs = field(default_factory=EngineArgs)
    #: Where ``image`` came from when not from the file: ``--dockapp-image`` in place of its build.
    image_from: str = ""


@dataclass(frozen=True)
class Source:
    """Where a top-level secret's or config's content comes from: a file, an environment
    variable, or (configs) inline content. Never the value of a secret itself."""

    kind: str  # file | environment | content
    ref: str  # the absolute path, the variable's name, or the content


@dataclass(frozen=True)
class Scope:
    """What one service is read against: the project's folder and variables, its top-level
    secrets, configs, networks and volumes, and the keys the user skips."""

    directory: Path
    env: Mapping[str, str]
    secrets: Mapping[str, Source]
    configs: Mapping[str, Source]
    networks: frozenset[str]
    volumes: frozenset[str]
    where: str
    ignore: frozenset[str] = frozenset()


@dataclass
class Findings:
    """What reading a project's services found besides the services: keys it must refuse (all of
    them are one error, at the end), and keys it accepted without applying (one notice)."""

    refused: list[tuple[str, str, str]] = field(default_factory=list)  # service, key, why
    accepted: dict[str, list[str]] = field(default_factory=dict)  # key -> services
    ignored: dict[str, list[str]] = field(default_factory=dict)  # key -> services (dockapp_compose_ignore)

    def accept(self, key: str, service: str, ignored: bool = False) -> None:
        (self.ignored if ignored else self.accepted).setdefault(key, []).append(service)


def parse_service(name: str, body: Any, scope: Scope, findings: Findings) -> ServiceDef:
    """``body`` as the stack runs it; refused and accepted keys go to ``findings``."""
    where = scope.where
    if not isinstance(body, dict):
        raise ComposeError(f"{where}: service {name} is not a mapping")
    ours = body.get("x-dockapp") or {}
    body = {k: v for k, v in body.items() if not str(k).startswith("x-")}
    for key in list(body):
        if key in scope.ignore or f"{name}.{key}" in scope.ignore:
            findings.accept(str(key), name, ignored=True)
            del body[key]
    check_shapes(body, SERVICE_SHAPES, where, f"service {name}: ")
    for key in body:  # in the file's order, as the error lists them
        if key not in SERVICE_KEYS:
            findings.refused.append((name, str(key), "not a key of the Compose Specification: check its spelling"))
        elif key in REFUSED:
            findings.refused.append((name, str(key), REFUSED[key]))
        elif key in ACCEPTED and key != "container_name":  # container_name is an alias: it does something
            findings.accept(key, name)
    svc = ServiceDef(name)
    if not isinstance(ours, dict) or set(ours) - {"state"}:
        raise ComposeError(f"{where}: service {name}: x-dockapp takes state: postgres | redis | none")
    svc.state = str(ours["state"]) if ours.get("state") else None
    if "build" in body:
        svc.build = _build(name, body["build"], scope, findings)
    svc.image = str(body["image"]) if body.get("image") else None
    if svc.build is None and svc.image is None:
        raise ComposeError(f"{where}: service {name} has neither build: nor image:")
    svc.command, svc.entrypoint = body.get("command"), body.get("entrypoint")
    svc.environment = _environment(name, body, scope)
    svc.working_dir, svc.user, svc.hostname = body.get("working_dir"), body.get("user"), body.get("hostname")
    svc.init = body.get("init")
    svc.tmpfs = _list(body.get("tmpfs"))
    svc.labels = {**_label_files(name, body.get("label_file"), scope), **str_map(body.get("labels"))}
    svc.mounts = [_mount(name, v, scope) for v in body.get("volumes") or []]
    svc.ports = [p for v in body.get("ports") or [] for p in _ports(name, v, where)]
    svc.expose = [p for v in body.get("expose") or [] for p in _ports(name, str(v).split(":")[-1], where)]
    svc.depends_on = _depends(name, body.get("depends_on") or {}, where)
    svc.healthcheck = _healthcheck(name, body.get("healthcheck"), where)
    svc.networks, svc.network_mode = _networks(name, body, scope)
    for link in _list(body.get("links")):
        target, _, alias = link.partition(":")
        svc.links.append((target, alias or target))
        svc.depends_on.setdefault(target, "service_started")  # a linked service starts first, as in compose
    if svc.network_mode and svc.network_mode.startswith("service:"):  # it joins that one's: started first
        svc.depends_on.setdefault(svc.network_mode.partition(":")[2], "service_started")
    if body.get("container_name"):
        svc.aliases.append(str(body["container_name"]))
    svc.profiles = _list(body.get("profiles"))
    svc.files = _files(name, body.get("secrets"), scope.secrets, "secret", "/run/secrets/", where)
    svc.files += _files(name, body.get("configs"), scope.configs, "config", "/", where)
    svc.engine = engine_args(body, f"{where}: service {name}")
    return svc


def _label_files(name: str, raw: Any, scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _list(raw):
        path = scope.directory / os.path.expanduser(item)
        if not path.is_file():
            raise ComposeError(f"{scope.where}: service {name}: label_file {path} does not exist")
        out.update(read_env_file(path, {}))
    return out


def _files(name: str, raw: Any, sources: Mapping[str, Source], what: str, base: str, where: str) -> list[InjectedFile]:
    """A service's ``secrets:`` or ``configs:`` (short form: names; long form: ``source``,
    ``target``, ``uid``, ``gid``, ``mode``) as files to copy into its container."""
    out = []
    for item in raw or []:
        spec = item if isinstance(item, dict) else {"source": item}
        source = str(spec.get("source") or "")
        if source not in sources:
            raise ComposeError(
                f"{where}: service {name} uses {what} {source!r}, which is not a top-level {what}",
                hint=f"define it under the top-level {what}s: with file: or environment:",
            )
        target = str(spec.get("target") or source)
        path = target if target.startswith("/") else base + target
        mode = spec.get("mode", 0o444)
        mode = int(str(mode), 8) if isinstance(mode, str) else int(mode)
        uid, gid = (int(spec[k]) if spec.get(k) not in (None, "") else 0 for k in ("uid", "gid"))
        ref = sources[source]
        out.append(InjectedFile(path, ref.kind, ref.ref, mode, uid, gid, secret=what == "secret"))
    return out


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _build(name: str, raw: Any, scope: Scope, findings: Findings) -> BuildDef:
    directory, secrets, where = scope.directory, scope.secrets, scope.where
    body = {"context": raw} if isinstance(raw, str) else dict(raw or {})
    for key in sorted(set(body) - _BUILD):
        if key in _BUILD_ACCEPTED:
            findings.accept(f"build.{key}", name)
        else:
            why = _BUILD_REFUSED.get(key, "not a build key the plugin's builders take")
            findings.refused.append((name, f"build.{key}", why))
    context = str(body.get("context") or ".")
    if re.match(r"^[a-z][a-z0-9+.-]*://", context) or context.startswith("git@"):
        raise ComposeError(f"{where}: service {name}: a remote build context ({context}) is not supported")
    wanted = []
    for item in body.get("secrets") or []:
        sid = str(item["source"] if isinstance(item, dict) else item)
        if sid not in secrets or secrets[sid].kind == "content":
            raise ComposeError(f"{where}: service {name}: build secret {sid!r} is not a top-level secret")
        wanted.append(sid)
    args = str_map(body.get("args"))
    dockerfile = str(body["dockerfile"]) if body.get("dockerfile") else None
    if body.get("dockerfile_inline") is not None:
        if dockerfile:
            raise ComposeError(f"{where}: service {name}: build has both dockerfile and dockerfile_inline")
        # A file named by its text: the builders take a Dockerfile outside the context, and the
        # next session finds the same file, so its build is reused.
        dockerfile = str(state_files.kept_text("dockerfile-inline", str(body["dockerfile_inline"]), ".Dockerfile"))
    return BuildDef(
        (directory / context).resolve(),
        dockerfile,
        args,
        str(body["target"]) if body.get("target") else None,
        {sid: secrets[sid].ref for sid in wanted},
        _cache_refs(name, body, where, findings),
        tuple(p.lower() for p in _list(body.get("platforms"))),
        _ssh(body.get("ssh"), directory),
    )


def _ssh(raw: Any, directory: Path) -> dict[str, str]:
    """``build.ssh`` (``[default, id=path]`` or ``{id: path}``) as ``{id: path}``, a path relative
    to the compose file; ``default`` alone is the agent of ``SSH_AUTH_SOCK`` (``""``)."""
    items = [f"{k}={v}" if v else str(k) for k, v in raw.items()] if isinstance(raw, dict) else _list(raw)
    out = {}
    for item in items:
        sid, _, path = item.partition("=")
        out[sid] = str(directory / os.path.expanduser(path)) if path else ""
    return out


def _cache_refs(name: str, body: dict[str, Any], where: str, findings: Findings) -> RegistryCache | None:
    """``cache_from`` and ``cache_to`` as registry refs: a plain ref or ``type=registry,ref=...``.
    A cache of buildx's other exporters (local, gha, s3...) is read and not applied; with none
    left, the session's registry cache applies (None)."""
    if "cache_from" not in body and "cache_to" not in body:
        return None

    def refs(key: str) -> list[str]:
        out = []
        for item in _list(body.get(key)):
            plain = {"type": "registry", "ref": item}
            fields = dict(part.partition("=")[::2] for part in item.split(",")) if "=" in item else plain
            kind = fields.get("type", "")
            if kind in _BUILDX_CACHES:
                findings.accept(f"build.{key} type={kind}", name)
                continue
            if kind != "registry" or not fields.get("ref"):
                raise ComposeError(
                    f"{where}: service {name}: build.{key} {item!r} is not a registry ref",
                    hint="write type=registry,ref=REF or REF (type=local, gha, s3, azblob and inline are read and "
                    "not applied: these builders lack buildx's cache exporters)",
                )
            try:
                out.append(check_reference(fields["ref"], tagged=key == "cache_to"))
            except ConfigurationError as exc:
                raise ComposeError(f"{where}: service {name}: build.{key}: {exc.what}", hint=exc.hint) from None
        return out

    pulled, pushed = tuple(refs("cache_from")), refs("cache_to")
    if len(pushed) > 1:
        raise ComposeError(f"{where}: service {name}: build.cache_to names {len(pushed)} refs; one image is pushed")
    if not pulled and not pushed:
        return None
    return RegistryCache(pulled, pushed[0] if pushed else None)


def _environment(name: str, body: dict[str, Any], scope: Scope) -> dict[str, str]:
    directory, where = scope.directory, scope.where
    out: dict[str, str] = {}
    env_files = body.get("env_file") or []
    for item in [env_files] if isinstance(env_files, str) else env_files:  # one file, or a list
        spec = item if isinstance(item, dict) else {"path": item}
        path = directory / os.path.expanduser(str(spec["path"]))
        if not path.is_file():
            if spec.get("required", True) is False:
                continue
            raise ComposeError(f"{where}: service {name}: env_file {path} does not exist")
        out.update(read_env_file(path, os.environ))
    for key, value in as_map(body.get("environment") or {}, "environment").items():
        if value is None:  # `KEY` alone: from the environment running the tests, if set there
            if key in os.environ:
                out[key] = os.environ[key]
        else:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _mount(name: str, raw: Any, scope: Scope) -> Mount:
    directory, volumes, where = scope.directory, scope.volumes, scope.where
    if isinstance(raw, dict):
        kind, source, target = str(raw.get("type", "volume")), str(raw.get("source") or ""), str(raw.get("target"))
        read_only = bool(raw.get("read_only"))
    else:
        parts = str(raw).split(":")
        if len(parts) == 1:
            return Mount("anonymous", "", parts[0])
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if kind == "bind":
        return Mount("bind", str((directory / os.path.expanduser(source)).resolve()), target, read_only)
    if kind == "tmpfs":
        return Mount("tmpfs", "", target)
    if kind != "volume":
        raise ComposeError(f"{where}: service {name}: volume type {kind!r} is not supported")
    if not source:
        return Mount("anonymous", "", target)
    if source not in volumes:
        raise ComposeError(
            f"{where}: service {name} mounts volume {source!r}, which is not in the top-level volumes:",
            hint=f"add `volumes: {{{source}: {{}}}}` at the top level, or write ./{source} for a bind mount",
        )
    return Mount("volume", source, target, read_only)


def _ports(name: str, raw: Any, where: str) -> list[PortSpec]:
    if isinstance(raw, dict):
        published = raw.get("published")
        return [PortSpec(int(raw["target"]), str(raw.get("protocol") or "tcp"), int(published) if published else None)]
    text = str(raw)
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    parts = text.rsplit(":", 2)  # [ip:]host:container, or container alone
    container, host = parts[-1], (parts[-2] if len(parts) > 1 else "")
    try:
        first, _, last = container.partition("-")
        span = range(int(first), int(last or first) + 1)
        hosts: list[int | None] = [None] * len(span)
        if host:
            h_first = host.partition("-")[0]
            hosts = [int(h_first) + i for i in range(len(span))]
    except ValueError:
        raise ComposeError(
            f"{where}: service {name}: {raw!r} is not a port mapping",
            hint="forms: 80, 8080:80, 127.0.0.1:8080:80, 8080:80/udp, 9090-9091:8080-8081",
        ) from None
    return [PortSpec(p, proto, h) for p, h in zip(span, hosts)]


def _depends(name: str, raw: Any, where: str) -> dict[str, str]:
    out = {}
    for dep, body in as_map(raw, "depends_on").items():
        unknown = sorted(set(body or {}) - {"condition", "required", "restart"})
        if unknown:
            raise ComposeError(f"{where}: service {name}: depends_on {dep}: key {unknown[0]!r} is not supported")
        condition = str((body or {}).get("condition", "service_started"))
        if condition not in _CONDITIONS:
            raise ComposeError(
                f"{where}: service {name}: depends_on {dep}: condition {condition!r} is unknown",
                hint=f"valid: {', '.join(_CONDITIONS)}",
            )
        if dep == name:
            raise ComposeError(f"{where}: service {name} depends on itself")
        out[str(dep)] = condition
    return out


def parse_duration(value: Any, where: str) -> int:
    """A compose duration (``1m30s``, ``500ms``, ``10``) in nanoseconds, as the engine API wants."""
    text = str(value).strip()
    units = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1}
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * 1e9)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ComposeError(f"{where}: {value!r} is not a duration", hint="e.g. 10s, 1m30s, 500ms")
    return int(sum(float(n) * units[u] for n, u in parts))


def _healthcheck(name: str, raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    unknown = sorted(set(raw) - _HEALTH)
    if unknown:
        raise ComposeError(f"{where}: service {name}: healthcheck key {unknown[0]!r} is not supported")
    if raw.get("disable"):
        return {"test": ["NONE"]}
    out: dict[str, Any] = {}
    test = raw.get("test")
    if test is not None:
        if not isinstance(test, (str, list)):
            raise ComposeError(
                f"{where}: service {name}: healthcheck test {test!r} is neither a string nor a list",
                hint='e.g. test: ["CMD", "pg_isready"] or test: pg_isready -h 127.0.0.1',
            )
        out["test"] = ["CMD-SHELL", test] if isinstance(test, str) else [str(t) for t in test]
    for key, api in (("interval", "interval"), ("timeout", "timeout"), ("start_period", "start_period")):
        if raw.get(key) is not None:
            out[api] = parse_duration(raw[key], f"{where}: service {name}: healthcheck {key}")
    if raw.get("retries") is not None:
        out["retries"] = int(raw["retries"])
    if raw.get("start_interval") is not None:
        # Checked, not sent: docker-py's Healthcheck drops StartInterval (engines before 25 lack it).
        # Its purpose, a fast first verdict, is the readiness wait's own: it runs the check by exec
        # from the start, every 0.1 s, backing off.
        parse_duration(raw["start_interval"], f"{where}: service {name}: healthcheck start_interval")
    return out


def _networks(name: str, body: dict[str, Any], scope: Scope) -> tuple[dict[str, Attachment], str | None]:
    """The stack networks a service joins (in compose's order: priority, then name), with its
    aliases and fixed addresses on each; or its ``network_mode`` (``none``, ``host``,
    ``service:<name>``), which joins none."""
    where, raw, mode = scope.where, body.get("networks"), body.get("network_mode")
    if mode is not None:
        mode = str(mode)
        if raw:
            raise ComposeError(f"{where}: service {name} has both network_mode and networks", hint="keep one")
        if mode not in ("none", "host", "bridge") and not mode.startswith("service:"):
            raise ComposeError(
                f"{where}: service {name}: network_mode {mode!r} is not supported",
                hint="a test stack takes none, host or service:<name> (a container outside the stack is not "
                "the stack's to join)",
            )
        return {}, mode
    items = {"default": None} if raw is None else raw if isinstance(raw, dict) else {n: None for n in raw}
    joined: dict[str, Attachment] = {}
    for net, spec in sorted(items.items(), key=lambda kv: (-int((kv[1] or {}).get("priority") or 0), str(kv[0]))):
        if net not in scope.networks:
            raise ComposeError(f"{where}: service {name} joins network {net!r}, which is not a top-level network")
        spec = spec or {}
        unknown = sorted(set(spec) - {"aliases", "ipv4_address", "ipv6_address", "priority", "gw_priority"})
        if unknown:
            raise ComposeError(f"{where}: service {name}: network option {unknown[0]!r} is not supported")
        ipv4, ipv6 = spec.get("ipv4_address"), spec.get("ipv6_address")
        joined[str(net)] = Attachment(
            tuple(str(a) for a in spec.get("aliases") or []),
            str(ipv4) if ipv4 else None,
            str(ipv6) if ipv6 else None,
        )
    return joined, None


def as_map(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if key == "depends_on":
        return {str(v): {"condition": "service_started"} for v in value}
    out: dict[str, Any] = {}
    for item in value or []:
        k, eq, v = str(item).partition("=")
        out[k] = v if eq else None
    return out
