"""A compose file, read as the Compose Specification says: interpolation, the ``.env`` file
next to it, YAML anchors and merge keys, ``x-`` fields, profiles and ``-f a -f b`` overrides.

A key the plugin does not support is an error that names the key, the service and the file:
silently ignoring one would test something other than what the file says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dockapp.core.errors import ComposeError
from pytest_dockapp.services.interpolate import interpolate_tree, read_env_file
from pytest_dockapp.services.shapes import SERVICE_SHAPES, TOP_SHAPES, check_shapes

#: Service keys applied as compose applies them.
SUPPORTED = {
    "build": "context, dockerfile, args, target, secrets; built by the plugin's builder",
    "image": "run as is, pulled first when it is not on the engine (as compose does); beside `build:`, the build "
    "is run and not tagged with it",
    "command": "string or list",
    "entrypoint": "string or list",
    "environment": "list or map",
    "env_file": "string or list, relative to the compose file",
    "working_dir": "",
    "user": "",
    "hostname": "",
    "init": "",
    "tmpfs": "string or list",
    "labels": "list or map, on top of the session's labels",
    "volumes": "named volumes (removed with the stack), bind mounts relative to the compose file, tmpfs",
    "ports": "published on random host ports (fixed ones with dockapp_compose_host_ports = true)",
    "expose": "published on random host ports too, so tests can reach them",
    "depends_on": "short and long form; service_started, service_healthy, service_completed_successfully",
    "healthcheck": "overrides the image's; `disable: true` turns it off",
    "networks": "names of the stack's network, with `aliases`",
    "profiles": "a service with profiles runs only when one is in dockapp_compose_profiles",
}
#: Service keys that are read but do not change what runs, and why.
ACCEPTED = {
    "container_name": "not used as the name (parallel runs would collide); it is an alias on the stack's network",
    "restart": "not applied: a service that dies must fail the test, not come back",
    "stop_signal": "not applied: test containers are removed with SIGKILL",
    "stop_grace_period": "not applied: test containers are removed with SIGKILL",
}
_TOP = {"version", "name", "services", "volumes", "networks", "secrets"}
_BUILD = {"context", "dockerfile", "args", "target", "secrets"}
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


@dataclass
class BuildDef:
    context: Path
    dockerfile: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)  # id -> file path or environment variable name


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
    aliases: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    #: Where ``image`` came from when not from the file: ``--dockapp-image`` in place of its build.
    image_from: str = ""


@dataclass
class Project:
    """The services of one or more compose files (the later files override the earlier)."""

    name: str
    files: list[Path]
    services: dict[str, ServiceDef]
    volumes: list[str]
    #: The top-level secrets: a file's path or an environment variable's name (never a value).
    secrets: dict[str, str] = field(default_factory=dict)

    def secret_values(self) -> set[str]:
        """The values of the top-level secrets, read now, for masking in every report."""
        values = set()
        for source in self.secrets.values():
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8", errors="replace") if path.is_absolute() else os.environ[source]
            except (OSError, KeyError):
                continue
            values |= {text, text.strip()} - {""}
        return values

    @property
    def directory(self) -> Path:
        return self.files[0].parent

    def main_service(self, wanted: str | None) -> str:
        """``wanted``, or the one service with a ``build:``; else a usage error listing them."""
        if wanted:
            if wanted not in self.services:
                raise ComposeError(
                    f"dockapp_service {wanted!r} is not a service of {_names(self.files)}",
                    hint=f"its services: {', '.join(self.services)}",
                )
            return wanted
        built = [s.name for s in self.services.values() if s.build is not None]
        if len(built) == 1:
            return built[0]
        raise ComposeError(
            f"{_names(self.files)} has {len(built) or 'no'} services with a build:, so which one is the app is unclear",
            hint=f"set dockapp_service to one of: {', '.join(self.services)}",
        )


def with_image(project: Project, service: str, image: str, source: str) -> Project:
    """``project`` with ``service`` running ``image`` instead of building (as compose runs a
    service's ``image:``); the rest of the stack is as the file says."""
    import dataclasses

    svc = dataclasses.replace(project.services[service], build=None, image=image, image_from=source)
    return dataclasses.replace(project, services={**project.services, service: svc})


def _names(files: Sequence[Path]) -> str:
    return " + ".join(str(f) for f in files)


def load_project(
    files: Sequence[str | os.PathLike[str]],
    *,
    profiles: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wanted: str | None = None,
) -> Project:
    """Read, interpolate, merge and check ``files`` (the first one's folder is the project's)."""
    import yaml

    paths = [Path(f).resolve() for f in files]
    if not paths:
        raise ComposeError("no compose file given", hint="set dockapp_compose = compose.yaml")
    directory = paths[0].parent
    environ = dict(os.environ if env is None else env)
    dotenv = directory / ".env"
    # The process environment wins over the .env file, as in compose.
    variables = {**(read_env_file(dotenv, environ) if dotenv.is_file() else {}), **environ}
    merged: dict[str, Any] = {}
    for path in paths:
        if not path.is_file():
            raise ComposeError(f"compose file {path} does not exist", hint="check dockapp_compose (ini or option)")
        try:
            raw = yaml.load(path.read_text(encoding="utf-8", errors="replace"), Loader=_loader()) or {}
        except yaml.YAMLError as exc:
            raise ComposeError(f"{path} is not valid YAML", evidence=str(exc), evidence_title="YAML said") from None
        except RecursionError:  # PyYAML composes nested nodes recursively
            raise ComposeError(
                f"{path} nests deeper than YAML can be read", hint="no compose key nests this deep"
            ) from None
        if not isinstance(raw, dict):
            raise ComposeError(f"{path} is not a mapping of top-level keys", hint="it starts with services:")
        raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
        check_shapes(raw, TOP_SHAPES, str(path), "")
        unknown = sorted(set(raw) - _TOP)
        if unknown:
            raise ComposeError(
                f"{path}: top-level key {unknown[0]!r} is not supported",
                hint=f"supported: {', '.join(sorted(_TOP))} and x- extension fields",
            )
        merged = _merge(merged, interpolate_tree(raw, variables, str(path)))
    return _project(merged, paths, variables, profiles, wanted)


def _loader() -> Any:
    """PyYAML's safe loader, with YAML 1.2's booleans (compose-go reads YAML 1.2): ``yes``,
    ``no``, ``on`` and ``off`` stay strings, so ``DEBUG: yes`` is ``yes`` as in compose."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    resolvers = {
        first: [(tag, rx) for tag, rx in found if tag != "tag:yaml.org,2002:bool"]
        for first, found in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def _project(
    data: dict[str, Any], paths: list[Path], env: dict[str, str], profiles: Sequence[str], wanted: str | None
) -> Project:
    where = _names(paths)
    raw_services = data.get("services") or {}
    if not isinstance(raw_services, dict) or not raw_services:
        raise ComposeError(f"{where} defines no services", hint="add a services: mapping")
    volumes = _top_level(data, "volumes", where)
    networks = _top_level(data, "networks", where) | {"default"}
    secrets = _secrets(data.get("secrets") or {}, paths[0].parent, where)
    services = {}
    for name, body in raw_services.items():
        try:
            services[name] = _service(str(name), body or {}, paths[0].parent, env, secrets, networks, volumes, where)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a value of the wrong shape
            raise ComposeError(
                f"{where}: service {name}: a value has the wrong shape ({type(exc).__name__}: {exc})",
                hint="compare the service with the Compose Specification's form for each key",
            ) from None
    active = {n for n, s in services.items() if not s.profiles or set(s.profiles) & set(profiles)}
    if wanted in services:  # naming a service activates it and what it needs, as `compose up web` does
        todo = [wanted]
        while todo:
            name = todo.pop()
            if name not in active:
                active.add(name)
            todo += [d for d in services[name].depends_on if d in services and d not in active]
    for name in sorted(active):
        for dep in services[name].depends_on:
            if dep not in services:
                raise ComposeError(
                    f"{where}: service {name} depends on {dep!r}, which is not a service",
                    hint=f"its services: {', '.join(services)}",
                )
            if dep not in active:
                raise ComposeError(
                    f"{where}: service {name} depends on {dep}, whose profiles {services[dep].profiles} are off",
                    hint="add one of them to dockapp_compose_profiles",
                )
    name = re.sub(r"[^a-z0-9_-]", "", str(data.get("name") or paths[0].parent.name).lower()) or "stack"
    return Project(name, paths, {n: s for n, s in services.items() if n in active}, sorted(volumes), secrets)


def _top_level(data: dict[str, Any], key: str, where: str) -> set[str]:
    """The names of top-level volumes or networks: only plain local ones are supported."""
    found = data.get(key) or {}
    for name, body in found.items():
        if body is not None and not isinstance(body, dict):
            kind = "a list" if isinstance(body, list) else f"a {type(body).__name__}"
            raise ComposeError(
                f"{where}: {key} {name} is {kind}, but must be a mapping (or empty), e.g. {key}: {{{name}: {{}}}}",
                hint="compare it with the Compose Specification's form of that key",
            )
        extra = sorted(set(body or {}) - {"driver", "labels", "name"})
        if extra or (body or {}).get("driver", "local") not in ("local", "bridge"):
            raise ComposeError(
                f"{where}: {key} {name}: {extra[0] if extra else 'driver'!r} is not supported",
                hint=f"each stack gets fresh local {key}, removed with it; external and driver options are not "
                "supported",
            )
    return {str(n) for n in found}


def _secrets(data: dict[str, Any], directory: Path, where: str) -> dict[str, str]:
    out = {}
    for name, body in data.items():
        body = body or {}
        if "file" in body:
            out[str(name)] = str((directory / os.path.expanduser(str(body["file"]))).resolve())
        elif "environment" in body:
            out[str(name)] = str(body["environment"])
        else:
            raise ComposeError(
                f"{where}: secret {name} has neither file: nor environment:", hint="build secrets come from either"
            )
    return out


def _merge(base: Any, over: Any, key: str = "") -> Any:
    """The override rules of the Compose Specification, for the keys we support."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, str(k)) if k in base else v
        return out
    if key in ("environment", "labels", "depends_on", "args") and isinstance(base, (list, dict)):
        return {**_as_map(base, key), **_as_map(over, key)}
    if key in ("tmpfs", "env_file") and isinstance(base, str):
        base = [base]
    if key in ("ports", "expose", "tmpfs", "env_file", "profiles") and isinstance(base, list):
        extra = over if isinstance(over, list) else [over]
        return base + [v for v in extra if v not in base]
    if key == "volumes" and isinstance(base, list) and isinstance(over, list):
        targets = {_volume_target(v): v for v in base}
        targets.update({_volume_target(v): v for v in over})
        return list(targets.values())
    return over


def _as_map(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if key == "depends_on":
        return {str(v): {"condition": "service_started"} for v in value}
    out: dict[str, Any] = {}
    for item in value or []:
        k, eq, v = str(item).partition("=")
        out[k] = v if eq else None
    return out


def _volume_target(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("target"))
    parts = str(value).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _service(
    name: str,
    body: dict[str, Any],
    directory: Path,
    env: dict[str, str],
    secrets: dict[str, str],
    networks: set[str],
    volumes: set[str],
    where: str,
) -> ServiceDef:
    if not isinstance(body, dict):
        raise ComposeError(f"{where}: service {name} is not a mapping")
    body = {k: v for k, v in body.items() if not str(k).startswith("x-")}
    check_shapes(body, SERVICE_SHAPES, where, f"service {name}: ")
    unknown = sorted(set(body) - set(SUPPORTED) - set(ACCEPTED))
    if unknown:
        raise ComposeError(
            f"{where}: service {name}: key {unknown[0]!r} is not supported",
            hint="pytest-dockapp never ignores a compose key silently; the README's Services section lists the "
            "supported keys. Remove it, or move it to an override file the tests do not load",
        )
    svc = ServiceDef(name)
    if "build" in body:
        svc.build = _build(name, body["build"], directory, secrets, where)
    svc.image = str(body["image"]) if body.get("image") else None
    if svc.build is None and svc.image is None:
        raise ComposeError(f"{where}: service {name} has neither build: nor image:")
    svc.command, svc.entrypoint = body.get("command"), body.get("entrypoint")
    svc.environment = _environment(name, body, directory, where)
    svc.working_dir, svc.user, svc.hostname = body.get("working_dir"), body.get("user"), body.get("hostname")
    svc.init = body.get("init")
    svc.tmpfs = _list(body.get("tmpfs"))
    svc.labels = {k: "" if v is None else str(v) for k, v in _as_map(body.get("labels") or {}, "labels").items()}
    svc.mounts = [_mount(name, v, directory, volumes, where) for v in body.get("volumes") or []]
    svc.ports = [p for v in body.get("ports") or [] for p in _ports(name, v, where)]
    svc.expose = [p for v in body.get("expose") or [] for p in _ports(name, str(v).split(":")[-1], where)]
    svc.depends_on = _depends(name, body.get("depends_on") or {}, where)
    svc.healthcheck = _healthcheck(name, body.get("healthcheck"), where)
    svc.aliases = _aliases(name, body.get("networks"), networks, where)
    if body.get("container_name"):
        svc.aliases.append(str(body["container_name"]))
    svc.profiles = _list(body.get("profiles"))
    return svc


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _build(name: str, raw: Any, directory: Path, secrets: dict[str, str], where: str) -> BuildDef:
    body = {"context": raw} if isinstance(raw, str) else dict(raw or {})
    unknown = sorted(set(body) - _BUILD)
    if unknown:
        raise ComposeError(
            f"{where}: service {name}: build key {unknown[0]!r} is not supported",
            hint=f"supported build keys: {', '.join(sorted(_BUILD))}",
        )
    context = str(body.get("context") or ".")
    if re.match(r"^[a-z][a-z0-9+.-]*://", context) or context.startswith("git@"):
        raise ComposeError(f"{where}: service {name}: a remote build context ({context}) is not supported")
    wanted = []
    for item in body.get("secrets") or []:
        sid = str(item["source"] if isinstance(item, dict) else item)
        if sid not in secrets:
            raise ComposeError(f"{where}: service {name}: build secret {sid!r} is not a top-level secret")
        wanted.append(sid)
    args = {k: "" if v is None else str(v) for k, v in _as_map(body.get("args") or {}, "args").items()}
    return BuildDef(
        (directory / context).resolve(),
        str(body["dockerfile"]) if body.get("dockerfile") else None,
        args,
        str(body["target"]) if body.get("target") else None,
        {sid: secrets[sid] for sid in wanted},
    )


def _environment(name: str, body: dict[str, Any], directory: Path, where: str) -> dict[str, str]:
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
    for key, value in _as_map(body.get("environment") or {}, "environment").items():
        if value is None:  # `KEY` alone: from the environment running the tests, if set there
            if key in os.environ:
                out[key] = os.environ[key]
        else:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _mount(name: str, raw: Any, directory: Path, volumes: set[str], where: str) -> Mount:
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
    for dep, body in _as_map(raw, "depends_on").items():
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
    return out


def _aliases(name: str, raw: Any, networks: set[str], where: str) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, dict) else {n: None for n in raw}
    aliases: list[str] = []
    for net, body in items.items():
        if net not in networks:
            raise ComposeError(f"{where}: service {name} joins network {net!r}, which is not a top-level network")
        unknown = sorted(set(body or {}) - {"aliases"})
        if unknown:
            raise ComposeError(f"{where}: service {name}: network option {unknown[0]!r} is not supported")
        aliases += [str(a) for a in (body or {}).get("aliases") or []]
    return aliases


def keys_table() -> str:
    """The README's table of service keys."""
    rows = ["| service key | how |", "|---|---|"]
    rows += [f"| `{key}` | {how or 'as compose applies it'} |" for key, how in SUPPORTED.items()]
    rows += [f"| `{key}` | read; {how} |" for key, how in ACCEPTED.items()]
    return "\n".join(rows)
