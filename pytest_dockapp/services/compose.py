"""A compose project, read as the Compose Specification says: interpolation, the ``.env`` file
next to it, YAML anchors and merge keys, ``x-`` fields, profiles, ``-f a -f b`` overrides,
``include:`` and ``extends:``.

Every key has one of three fates (:mod:`pytest_dockapp.services.keys`): honoured, accepted
(named once in a notice), or refused: all refusals of a project are one error, each with its
service and line, never a key ignored silently.
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
from pytest_dockapp.services.service import Findings, Scope, ServiceDef, Source, as_map, parse_service
from pytest_dockapp.services.shapes import TOP_SHAPES, check_shapes, key_line, read_yaml

__all__ = ["Project", "ServiceDef", "load_project", "with_image"]

_TOP = {"version", "name", "services", "volumes", "networks", "secrets", "configs", "include"}


@dataclass(frozen=True)
class NetworkDef:
    """A top-level network: made fresh for each stack (and removed with it), or an existing one
    the engine knows by ``external``'s name (used, never removed)."""

    internal: bool = False
    external: str | None = None
    enable_ipv6: bool = False
    #: ``ipam.config`` entries (``subnet``, ``gateway``, ``ip_range``): as written, as compose does.
    pools: tuple[tuple[tuple[str, str], ...], ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # driver_opts
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class Project:
    """The services of one or more compose files (the later files override the earlier)."""

    name: str
    files: list[Path]
    services: dict[str, ServiceDef]
    volumes: list[str]
    #: The top-level secrets: a file's path or an environment variable's name (never a value).
    secrets: dict[str, Source] = field(default_factory=dict)
    #: Top-level volumes that exist outside the stack (``external: true``): used, never removed.
    external_volumes: dict[str, str] = field(default_factory=dict)  # key -> the engine's name
    #: Keys read but not applied (key -> services), and those dockapp_compose_ignore skipped.
    accepted: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    #: The networks its services join ("default" unless a service names others).
    networks: dict[str, NetworkDef] = field(default_factory=dict)

    def secret_values(self) -> set[str]:
        """The values of the top-level secrets, read now, for masking in every report."""
        values = set()
        for source in self.secrets.values():
            try:
                text = (
                    Path(source.ref).read_text(encoding="utf-8", errors="replace")
                    if source.kind == "file"
                    else (os.environ[source.ref])
                )
            except (OSError, KeyError):
                continue
            values |= {text, text.strip()} - {""}
        return values

    def notice(self) -> str | None:
        """One line naming the keys read but not applied, and those skipped, or None."""

        def listed(found: dict[str, list[str]]) -> str:
            return ", ".join(f"{key} ({', '.join(sorted(set(services)))})" for key, services in sorted(found.items()))

        parts = [f"not applied in a test run: {listed(self.accepted)}"] if self.accepted else []
        parts += [f"skipped by dockapp_compose_ignore: {listed(self.ignored)}"] if self.ignored else []
        return f"{_names(self.files)}: {'; '.join(parts)}" if parts else None

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
    ignore: Sequence[str] = (),
) -> Project:
    """Read, interpolate, include, extend, merge and check ``files`` (the first one's folder is the
    project's). ``ignore`` names service keys to skip (``key`` or ``service.key``)."""
    paths = [Path(f).resolve() for f in files]
    if not paths:
        raise ComposeError("no compose file given", hint="set dockapp_compose = compose.yaml")
    environ = dict(os.environ if env is None else env)
    merged = _load_model(paths, paths[0].parent, environ, None, ())
    _apply_extends(merged, _names(paths))
    return _project(merged, paths, environ, profiles, wanted, frozenset(ignore))


def _variables(directory: Path, environ: Mapping[str, str], env_files: Sequence[Path] | None) -> dict[str, str]:
    """The variables a file is interpolated with: the ``.env`` file of its project folder (or the
    include's ``env_file``s), under the process environment, as compose reads them."""
    found: dict[str, str] = {}
    for path in env_files if env_files is not None else [directory / ".env"]:
        if path.is_file():
            found.update(read_env_file(path, environ))
        elif env_files is not None:
            raise ComposeError(f"include env_file {path} does not exist")
    return {**found, **environ}


def _load_model(
    paths: Sequence[Path],
    directory: Path,
    environ: Mapping[str, str],
    env_files: Sequence[Path] | None,
    chain: tuple[Path, ...],
) -> dict[str, Any]:
    """``paths`` read and merged in order, their relative paths resolved against ``directory``,
    and their ``include:``s imported (an included resource is overridden by the includer's)."""
    variables = _variables(directory, environ, env_files)
    merged: dict[str, Any] = {}
    for path in paths:
        raw = _read(path)
        check_shapes(raw, TOP_SHAPES, str(path), "")
        unknown = sorted(set(raw) - _TOP)
        if unknown:
            hint = "models are AI models, not containers" if unknown == ["models"] else "check its spelling"
            raise ComposeError(
                f"{path}: top-level key {', '.join(map(repr, unknown))} is not supported",
                hint=f"{hint}; the top-level keys are {', '.join(sorted(_TOP))} and x- extension fields",
            )
        data = interpolate_tree(raw, variables, str(path))
        _resolve_paths(data, directory)
        for item in data.pop("include", None) or []:
            data = _merge(_include(item, path, directory, environ, (*chain, path)), data)
        merged = _merge(merged, data)
    return merged


def _include(
    item: Any, by: Path, directory: Path, environ: Mapping[str, str], chain: tuple[Path, ...]
) -> dict[str, Any]:
    """One ``include:`` entry (a path, or ``path``, ``project_directory``, ``env_file``) loaded as
    a project of its own: its paths relative to its own folder, its own ``.env``."""
    spec = item if isinstance(item, dict) else {"path": item}
    unknown = sorted(set(spec) - {"path", "project_directory", "env_file"})
    if unknown or not spec.get("path"):
        raise ComposeError(
            f"{by}: include entry {item!r} is not a path or a mapping of path, project_directory, env_file",
            hint="e.g. include: [../db/compose.yaml] or include: [{path: ../db/compose.yaml, env_file: ../db/.env}]",
        )
    files = [directory / f for f in ([spec["path"]] if isinstance(spec["path"], str) else spec["path"])]
    files = [f.resolve() for f in files]
    for file in files:
        if file in chain:
            raise ComposeError(f"include cycle: {' includes '.join(str(p) for p in (*chain, file))}")
    folder = directory / spec["project_directory"] if spec.get("project_directory") else files[0].parent
    env_files = spec.get("env_file")
    env_paths = None
    if env_files is not None:
        env_paths = [directory / f for f in ([env_files] if isinstance(env_files, str) else env_files)]
    return _load_model(files, folder.resolve(), environ, env_paths, chain)


def _read(path: Path) -> dict[str, Any]:
    """One compose file's YAML, ``x-`` fields left out."""
    if not path.is_file():
        raise ComposeError(f"compose file {path} does not exist", hint="check dockapp_compose (ini or option)")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ComposeError(f"{path} is not a mapping of top-level keys", hint="it starts with services:")
    return {k: v for k, v in raw.items() if not str(k).startswith("x-")}


def _absolute(directory: Path, value: Any) -> str:
    return str((directory / os.path.expanduser(str(value))).resolve())


def _resolve_paths(data: dict[str, Any], directory: Path) -> None:
    """Relative paths made absolute against the file's project folder, as compose-go does before
    it merges files of different folders (build contexts, env and label files, bind mounts,
    ``extends.file``, secret and config files)."""
    for svc in (data.get("services") or {}).values():
        if not isinstance(svc, dict):
            continue
        build = svc.get("build")
        if isinstance(build, str):
            svc["build"] = {"context": build}
        if isinstance(svc.get("build"), dict) and not re.match(
            r"^[a-z][a-z0-9+.-]*://|^git@", str(svc["build"].get("context") or ".")
        ):
            svc["build"]["context"] = _absolute(directory, svc["build"].get("context") or ".")
        for key in ("env_file", "label_file"):
            value = svc.get(key)
            if isinstance(value, (str, list)):
                svc[key] = [_file_entry(i, directory) for i in ([value] if isinstance(value, str) else value)]
        extends = svc.get("extends")
        if isinstance(extends, str):
            svc["extends"] = {"service": extends}
        elif isinstance(extends, dict) and extends.get("file"):
            svc["extends"] = {**extends, "file": _absolute(directory, extends["file"])}
        if isinstance(svc.get("volumes"), list):
            svc["volumes"] = [_bind_path(v, directory) for v in svc["volumes"]]
    for key in ("secrets", "configs"):
        for body in (data.get(key) or {}).values():
            if isinstance(body, dict) and body.get("file"):
                body["file"] = _absolute(directory, body["file"])


def _file_entry(item: Any, directory: Path) -> Any:
    """An ``env_file``/``label_file`` entry (a path, or a mapping with ``path``) made absolute."""
    if isinstance(item, dict):
        return {**item, "path": _absolute(directory, item["path"])} if "path" in item else item
    return _absolute(directory, item)


def _bind_path(value: Any, directory: Path) -> Any:
    if isinstance(value, dict):
        if value.get("type") == "bind" and value.get("source"):
            return {**value, "source": _absolute(directory, value["source"])}
        return value
    source, colon, rest = str(value).partition(":")
    return f"{_absolute(directory, source)}:{rest}" if colon and source.startswith((".", "/", "~")) else value


def _apply_extends(data: dict[str, Any], where: str) -> None:
    """Each service's ``extends:`` (``service``, and ``file`` for another file's) merged under
    the service, recursively, as compose-go's ExtendService merges them."""
    services = data.get("services") or {}
    done: dict[str, Any] = {}

    def resolve(name: str, pool: dict[str, Any], file: str, chain: tuple[str, ...]) -> Any:
        key = f"{file}:{name}"
        if key in chain:
            raise ComposeError(f"{where}: extends cycle: {' -> '.join((*chain, key))}")
        body = pool.get(name)
        if not isinstance(body, dict) or "extends" not in body:
            return body
        spec = body["extends"]
        base_name = str(spec.get("service") or "")
        base_file = spec.get("file")
        base_pool = pool
        if base_file:
            model = _read(Path(base_file))
            _resolve_paths(model, Path(base_file).parent)
            base_pool = model.get("services") or {}
        if base_name not in base_pool:
            raise ComposeError(
                f"{where}: service {name} extends {base_name!r}, which is not a service of {base_file or file}",
                hint=f"its services: {', '.join(map(str, base_pool))}",
            )
        base = resolve(base_name, base_pool, str(base_file or file), (*chain, key))
        merged = _merge(_clone(base), {k: v for k, v in body.items() if k != "extends"})
        return merged

    for name in list(services):
        done[name] = resolve(str(name), services, where, ())
    data["services"] = done


def _clone(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _project(
    data: dict[str, Any],
    paths: list[Path],
    env: dict[str, str],
    profiles: Sequence[str],
    wanted: str | None,
    ignore: frozenset[str],
) -> Project:
    where = _names(paths)
    raw_services = data.get("services") or {}
    if not isinstance(raw_services, dict) or not raw_services:
        raise ComposeError(f"{where} defines no services", hint="add a services: mapping")
    volumes, external = _volumes(data, where)
    networks = _networks(data, where)
    scope = Scope(
        directory=paths[0].parent,
        env=env,
        secrets=_sources(data.get("secrets") or {}, where, "secret"),
        configs=_sources(data.get("configs") or {}, where, "config"),
        networks=frozenset(networks),
        volumes=frozenset(volumes | set(external)),
        where=where,
        ignore=ignore,
    )
    findings = Findings()
    services = {}
    for name, body in raw_services.items():
        try:
            services[name] = parse_service(str(name), body or {}, scope, findings)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a value of the wrong shape
            raise ComposeError(
                f"{where}: service {name}: a value has the wrong shape ({type(exc).__name__}: {exc})",
                hint="compare the service with the Compose Specification's form for each key",
            ) from None
    if findings.refused:
        raise _refusal(findings, paths)
    _apply_links(services, where)
    active = _active(services, profiles, wanted, where)
    name = re.sub(r"[^a-z0-9_-]", "", str(data.get("name") or paths[0].parent.name).lower()) or "stack"
    kept = {n: s for n, s in services.items() if n in active}
    used = {net for s in kept.values() for net in s.networks}
    return Project(
        name,
        paths,
        kept,
        sorted(volumes),
        dict(scope.secrets),
        external,
        findings.accepted,
        findings.ignored,
        {n: d for n, d in networks.items() if n in used},
    )


def _apply_links(services: dict[str, ServiceDef], where: str) -> None:
    """Each ``links`` alias given to the linked service on the networks the two share."""
    import dataclasses

    for svc in services.values():
        for target, alias in svc.links:
            other = services.get(target)
            if other is None:
                raise ComposeError(f"{where}: service {svc.name} links {target!r}, which is not a service")
            for net in set(svc.networks) & set(other.networks):
                how = other.networks[net]
                if alias not in how.aliases:
                    other.networks[net] = dataclasses.replace(how, aliases=(*how.aliases, alias))


def _active(services: dict[str, ServiceDef], profiles: Sequence[str], wanted: str | None, where: str) -> set[str]:
    """The services that run: those without profiles or with an enabled one, and what the
    wanted service needs (naming a service activates it, as ``compose up web`` does)."""
    active = {n for n, s in services.items() if not s.profiles or set(s.profiles) & set(profiles)}
    if wanted in services:
        todo = [wanted]
        while todo:
            name = todo.pop()
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
    return active


def _refusal(findings: Findings, paths: Sequence[Path]) -> ComposeError:
    """All refused keys as one error: each with its service, file and line, and why."""
    lines = []
    for service, key, why in findings.refused:
        lines.append(f"service {service}: {key} ({key_line(paths, service, key.split('.')[0])}): {why}")
    keys = sorted({key for _, key, _ in findings.refused})
    return ComposeError(
        f"{_names(paths)}: {len(lines)} key{'s' * (len(lines) > 1)} a test run cannot honour",
        evidence="\n".join(lines),
        evidence_title="refused keys",
        hint="do what each line says, or skip the keys in the tests (an override file cannot remove a key): "
        f"dockapp_compose_ignore = {' '.join(keys)}",
    )


def _volumes(data: dict[str, Any], where: str) -> tuple[set[str], dict[str, str]]:
    """The stack's own volumes (created and removed with it), and the external ones by the name
    the engine knows them by."""
    own: set[str] = set()
    external: dict[str, str] = {}
    for name, body in _top_level(data, "volumes", where).items():
        extra = sorted(set(body) - {"driver", "driver_opts", "labels", "name", "external"})
        if extra or body.get("driver", "local") != "local":
            raise ComposeError(
                f"{where}: volumes {name}: {extra[0] if extra else 'driver'!r} is not supported",
                hint="each stack gets fresh local volumes, removed with it, or uses an external: true one",
            )
        if body.get("external"):
            external[name] = str(body.get("name") or name)
        else:
            own.add(name)
    return own, external


def _networks(data: dict[str, Any], where: str) -> dict[str, NetworkDef]:
    out = {"default": NetworkDef()}
    for name, body in _top_level(data, "networks", where).items():
        extra = sorted(
            set(body)
            - {
                "driver",
                "driver_opts",
                "labels",
                "name",
                "external",
                "internal",
                "attachable",
                "enable_ipv6",
                "enable_ipv4",
                "ipam",
            }
        )
        if extra or body.get("driver", "bridge") not in ("local", "bridge"):
            raise ComposeError(
                f"{where}: networks {name}: {(extra or ['driver ' + str(body.get('driver'))])[0]!r} is not supported",
                hint="a stack's networks are bridge networks of the engine it runs on",
            )
        ipam = body.get("ipam") or {}
        if (ipam.get("driver") or "default") != "default" or set(ipam) - {"driver", "config", "options"}:
            raise ComposeError(f"{where}: networks {name}: only the default ipam driver and its config are supported")
        pools = tuple(
            tuple((str(k), str(v)) for k, v in pool.items() if k in ("subnet", "gateway", "ip_range"))
            for pool in ipam.get("config") or []
        )
        external = body.get("external")
        out[name] = NetworkDef(
            internal=bool(body.get("internal")),
            external=str(body.get("name") or name) if external else None,
            enable_ipv6=bool(body.get("enable_ipv6")),
            pools=pools,
            options=tuple((str(k), str(v)) for k, v in (body.get("driver_opts") or {}).items()),
            labels=tuple(as_map(body.get("labels") or {}, "labels").items()),
        )
    return out


def _top_level(data: dict[str, Any], key: str, where: str) -> dict[str, dict[str, Any]]:
    """The top-level volumes or networks, each a mapping (or empty)."""
    out = {}
    for name, body in (data.get(key) or {}).items():
        if body is not None and not isinstance(body, dict):
            kind = "a list" if isinstance(body, list) else f"a {type(body).__name__}"
            raise ComposeError(
                f"{where}: {key} {name} is {kind}, but must be a mapping (or empty), e.g. {key}: {{{name}: {{}}}}",
                hint="compare it with the Compose Specification's form of that key",
            )
        out[str(name)] = dict(body or {})
    return out


def _sources(data: dict[str, Any], where: str, what: str) -> dict[str, Source]:
    """Top-level secrets or configs: where each one's content comes from."""
    out = {}
    for name, body in data.items():
        body = body or {}
        if body.get("file"):
            out[str(name)] = Source("file", str(body["file"]))
        elif body.get("environment"):
            out[str(name)] = Source("environment", str(body["environment"]))
        elif what == "config" and "content" in body:
            out[str(name)] = Source("content", str(body["content"]))
        else:
            forms = "file:, environment: or content:" if what == "config" else "file: or environment:"
            external = " (external ones live in a swarm, which a test stack is not)" if body.get("external") else ""
            raise ComposeError(f"{where}: {what} {name} has none of {forms}{external}", hint=f"give it {forms}")
    return out


def _merge(base: Any, over: Any, key: str = "") -> Any:
    """The override rules of the Compose Specification, for the keys we support."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, str(k)) if k in base else v
        return out
    if key in ("environment", "labels", "depends_on", "args") and isinstance(base, (list, dict)):
        return {**as_map(base, key), **as_map(over, key)}
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


def _volume_target(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("target"))
    parts = str(value).split(":")
    return parts[1] if len(parts) > 1 else parts[0]
