"""Every service key of the Compose Specification, and what a test run does with it:

* **honoured**: applied as ``docker compose`` applies it;
* **accepted**: read, but it changes nothing a test can observe (or must not act: a restart
  policy would hide a crash); the run names them once, in one notice line;
* **refused**: a test run cannot honour it here; all of a file's refusals are one error, each
  with its service, its line and what to do (``dockapp_compose_ignore`` skips a key).

The keys that only configure the container (limits, capabilities, DNS...) become arguments of
the engine's create call here (:func:`engine_args`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_dockapp.core.errors import ComposeError

#: Keys applied as compose applies them, and how.
HONOURED: dict[str, str] = {
    "build": "context, dockerfile, dockerfile_inline, args, target, secrets, ssh, cache_from, cache_to, "
    "platforms; built by the plugin's builder",
    "image": "run as is, pulled first when it is not on the engine (as compose does); beside `build:`, the build "
    "is run and not tagged with it",
    "command": "string or list",
    "entrypoint": "string or list",
    "environment": "list or map",
    "env_file": "string or list (long form: `path`, `required`), relative to the compose file",
    "working_dir": "",
    "user": "",
    "hostname": "",
    "domainname": "",
    "init": "",
    "tmpfs": "string or list",
    "labels": "list or map, on top of the session's labels",
    "label_file": "KEY=VALUE files, relative to the compose file; `labels` win",
    "volumes": "named volumes (removed with the stack; `external: true` ones kept), bind mounts relative to the "
    "compose file, tmpfs",
    "ports": "published on random host ports (fixed ones with dockapp_compose_host_ports = true)",
    "expose": "published on random host ports too, so tests can reach them",
    "depends_on": "short and long form; service_started, service_healthy, service_completed_successfully",
    "healthcheck": "overrides the image's; `disable: true` turns it off; `start_interval`'s fast first verdict is "
    "the readiness wait's own (it runs the check from the start, every 0.1 s, backing off)",
    "networks": "list or map, each a network of the stack's own (services on different networks cannot reach each "
    "other), with `aliases`, `ipv4_address`, `ipv6_address` and `priority`",
    "links": "`service` or `service:alias`: the alias is the linked service's on the networks the two share, and "
    "the linked service starts first, as with compose",
    "network_mode": "`none`, `host` (the app is then dialled on its own port), `service:<name>` (which starts first)",
    "profiles": "a service with profiles runs only when one is in dockapp_compose_profiles",
    "secrets": "short and long form (`source`, `target`, `uid`, `gid`, `mode`): copied into the container at "
    "/run/secrets/<target> (or an absolute target) before it starts, mode 0444 unless given; masked in reports",
    "configs": "short and long form: copied into the container at /<source> (or `target`) before it starts; "
    "`file`, `environment` or `content`",
    "extends": "`service` and `file`, merged as compose merges them",
    "cap_add": "capabilities the service asks for (never `privileged`)",
    "cap_drop": "",
    "shm_size": "bytes or 64m, 1g...",
    "sysctls": "list or map",
    "ulimits": "`nofile: 1024` or `nofile: {soft, hard}`",
    "stdin_open": "",
    "tty": "",
    "platform": "checked against the engine's: a platform the engine cannot run is an error naming both",
    "runtime": "checked against the engine's runtimes: one it lacks is an error naming it",
    "deploy": "`resources.limits` (memory, cpus, pids) and `resources.reservations.memory`; `replicas` 1; the rest "
    "is swarm's and read only",
    "scale": "1 only",
    "mem_limit": "",
    "mem_reservation": "",
    "memswap_limit": "",
    "mem_swappiness": "",
    "oom_kill_disable": "",
    "oom_score_adj": "",
    "pids_limit": "",
    "cpus": "",
    "cpu_shares": "",
    "cpu_quota": "",
    "cpu_period": "",
    "cpu_rt_runtime": "",
    "cpu_rt_period": "",
    "cpuset": "",
    "extra_hosts": "list (`host:ip` or `host=ip`) or map",
    "dns": "",
    "dns_search": "",
    "dns_opt": "",
    "read_only": "",
    "security_opt": "",
    "devices": "where the engine permits them",
    "device_cgroup_rules": "",
    "group_add": "",
    "ipc": "`private`, `shareable` or `host`",
    "pid": "`host` or unset",
    "uts": "`host` or unset",
    "userns_mode": "",
    "cgroup": "`host` or `private`",
    "cgroup_parent": "",
    "mac_address": "",
    "storage_opt": "where the engine's storage driver supports it",
    "stop_signal": "set on the container; test containers are still removed at once",
}
#: Keys that are read but change nothing a test run can observe, and why.
ACCEPTED: dict[str, str] = {
    "container_name": "not used as the name (parallel runs would collide); it is an alias on the stack's networks",
    "restart": "not applied: a service that dies must fail the test, not come back",
    "stop_grace_period": "not applied: test containers are removed at once",
    "develop": "watch mode is for `docker compose watch`; a test run builds once",
    "logging": "the engine's default driver is kept, so the plugin can read the logs it puts in reports",
    "pull_policy": "an image not on the engine is pulled, one that is, is used (`missing`)",
    "pull_refresh_after": "as pull_policy",
    "attach": "compose's terminal output; the plugin reads each service's log itself",
    "annotations": "OCI annotations change nothing a test can see",
    "blkio_config": "I/O weights and limits change no result, only speed",
    "cpu_count": "Windows containers only",
    "cpu_percent": "Windows containers only",
    "credential_spec": "Windows containers only",
    "isolation": "Windows containers only",
}
#: Keys a test run cannot honour here: why, and what to do instead.
REFUSED: dict[str, str] = {
    "privileged": "containers are never privileged: add the capabilities the service needs with cap_add",
    "volumes_from": "mount the same named volume in both services instead",
    "external_links": "a stack reaches nothing outside it by name: start that container as a service of the file",
    "gpus": "GPU devices need a runtime this plugin does not set up",
    "post_start": "lifecycle hooks are not run: run the command in the test, or in the image's entrypoint",
    "pre_start": "lifecycle hooks are not run: run the command in the image's entrypoint",
    "pre_stop": "lifecycle hooks are not run: test containers are removed at once",
    "use_api_socket": "a test container is never given the engine's socket and credentials",
    "provider": "services run by an external provider are not containers the plugin can start",
    "models": "AI models are not containers the plugin can start",
}
SERVICE_KEYS = {**HONOURED, **ACCEPTED, **REFUSED}


@dataclass(frozen=True)
class EngineArgs:
    """What a service's engine keys add to the create call, and to its host config."""

    create: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    platform: str | None = None  # checked against the engine's before the create call
    runtime: str | None = None  # checked against the engine's runtimes


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_bytes(value: Any, where: str) -> int:
    """A compose byte size (``64m``, ``1.5g``, ``1gb``, ``512``) in bytes, as compose-go reads it
    (docker/go-units RAMInBytes: powers of 1024, case-insensitive)."""
    if isinstance(value, bool):
        raise ComposeError(f"{where}: {value!r} is not a size", hint="e.g. 64m, 1g, or bytes")
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", str(value), re.I)
    if match is None:
        raise ComposeError(f"{where}: {value!r} is not a size", hint="e.g. 64m, 1g, or bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def str_map(value: Any) -> dict[str, str]:
    """A list of KEY=VALUE or a mapping, as strings (a KEY alone, or a null value: "")."""
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out = {}
    for item in value or []:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def _ulimits(raw: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    out = []
    for name, value in raw.items():
        if isinstance(value, Mapping):
            soft, hard = value.get("soft"), value.get("hard")
        else:
            soft = hard = value
        if not isinstance(soft, int) or not isinstance(hard, int):
            raise ComposeError(f"{where}: ulimits {name}: {value!r} is not a number or {{soft, hard}}")
        out.append({"Name": str(name), "Soft": soft, "Hard": hard})
    return out


def _extra_hosts(raw: Any) -> list[str]:
    """``host:ip`` as the engine takes it, from ``host=ip``, ``host:ip`` (an IPv6 ip keeps its
    colons) or a mapping."""
    if isinstance(raw, Mapping):
        items = [(str(k), v) for k, v in raw.items()]
        return [f"{host}:{ip}" for host, ips in items for ip in (ips if isinstance(ips, list) else [ips])]
    out = []
    for item in raw or []:
        text = str(item)
        host, eq, ip = text.partition("=")
        if not eq:
            host, _, ip = text.partition(":")
        out.append(f"{host}:{ip.strip('[]')}")
    return out


def _devices(raw: list[Any]) -> list[str]:
    out = []
    for item in raw:
        if isinstance(item, Mapping):
            parts = [str(item["source"]), str(item.get("target") or item["source"])]
            out.append(":".join(parts + ([str(item["permissions"])] if item.get("permissions") else [])))
        else:
            out.append(str(item))
    return out


def _namespace(key: str, value: Any, allowed: tuple[str, ...], where: str) -> str:
    text = str(value)
    if text not in allowed:
        raise ComposeError(
            f"{where}: {key}: {text!r} is not supported",
            hint=f"a test run takes {' or '.join(allowed)}; a mode shared with another service or container "
            f"is not (skip it with dockapp_compose_ignore = {key})",
        )
    return text


def engine_args(body: Mapping[str, Any], where: str) -> EngineArgs:
    """The create call's arguments for a service's engine keys (``where`` names the service)."""
    args = EngineArgs()
    create, host = args.create, args.host
    for key in ("stdin_open", "tty"):
        if body.get(key) is not None:
            create[key] = bool(body[key])
    for key in ("domainname", "mac_address", "stop_signal"):
        if body.get(key) is not None:
            create[key] = str(body[key])
    for key in ("cap_add", "cap_drop", "security_opt", "dns_search", "dns_opt", "device_cgroup_rules"):
        if body.get(key):
            host[key] = [str(v) for v in body[key]]
    if body.get("dns"):
        host["dns"] = [str(v) for v in (body["dns"] if isinstance(body["dns"], list) else [body["dns"]])]
    if body.get("group_add"):
        host["group_add"] = [str(v) for v in body["group_add"]]
    for key, api in (("shm_size", "shm_size"), ("mem_limit", "mem_limit"), ("mem_reservation", "mem_reservation")):
        if body.get(key) is not None:
            host[api] = parse_bytes(body[key], f"{where}: {key}")
    if body.get("memswap_limit") is not None:
        swap = body["memswap_limit"]
        host["memswap_limit"] = -1 if str(swap) == "-1" else parse_bytes(swap, f"{where}: memswap_limit")
    for key in ("pids_limit", "mem_swappiness", "oom_score_adj", "cpu_shares", "cpu_quota", "cpu_period"):
        if body.get(key) is not None:
            host[key] = int(body[key])
    for key, api in (("cpu_rt_runtime", "cpu_rt_runtime"), ("cpu_rt_period", "cpu_rt_period")):
        if body.get(key) is not None:
            host[api] = int(re.sub(r"(us|ms|s)$", "", str(body[key])) or 0)
    if body.get("oom_kill_disable") is not None:
        host["oom_kill_disable"] = bool(body["oom_kill_disable"])
    if body.get("read_only") is not None:
        host["read_only"] = bool(body["read_only"])
    if body.get("cpus") is not None:
        host["nano_cpus"] = int(float(body["cpus"]) * 1e9)
    if body.get("cpuset") is not None:
        host["cpuset_cpus"] = str(body["cpuset"])
    if body.get("sysctls"):
        host["sysctls"] = str_map(body["sysctls"])
    if body.get("ulimits"):
        host["ulimits"] = _ulimits(body["ulimits"], where)
    if body.get("extra_hosts"):
        host["extra_hosts"] = _extra_hosts(body["extra_hosts"])
    if body.get("devices"):
        host["devices"] = _devices(body["devices"])
    if body.get("storage_opt"):
        host["storage_opt"] = str_map(body["storage_opt"])
    if body.get("cgroup_parent"):
        host["cgroup_parent"] = str(body["cgroup_parent"])
    namespaces = (
        ("ipc", "ipc_mode", ("private", "shareable", "host")),
        ("pid", "pid_mode", ("host",)),
        ("uts", "uts_mode", ("host",)),
        ("cgroup", "cgroupns", ("host", "private")),
        ("userns_mode", "userns_mode", ("host",)),
    )
    for key, api, allowed in namespaces:
        if body.get(key):
            host[api] = _namespace(key, body[key], allowed, where)
    _deploy(body, where, host)
    platform = str(body["platform"]) if body.get("platform") else None
    runtime = str(body["runtime"]) if body.get("runtime") else None
    if runtime:
        host["runtime"] = runtime
    return EngineArgs(create, host, platform, runtime)


def _deploy(body: Mapping[str, Any], where: str, host: dict[str, Any]) -> None:
    """``deploy.resources`` as limits of the one container; more than one replica is an error."""
    deploy = body.get("deploy") or {}
    replicas = deploy.get("replicas", body.get("scale", 1))
    if replicas is not None and int(replicas) != 1:
        raise ComposeError(
            f"{where}: {replicas} replicas: a test stack runs one container per service",
            hint="set replicas (or scale) to 1 for the tests, in an override file (dockapp_compose = compose.yaml "
            "compose.test.yaml), or skip the key with dockapp_compose_ignore = deploy",
        )
    resources = deploy.get("resources") or {}
    limits, reservations = resources.get("limits") or {}, resources.get("reservations") or {}
    if limits.get("memory") is not None:
        host["mem_limit"] = parse_bytes(limits["memory"], f"{where}: deploy.resources.limits.memory")
    if limits.get("cpus") is not None:
        host["nano_cpus"] = int(float(limits["cpus"]) * 1e9)
    if limits.get("pids") is not None:
        host["pids_limit"] = int(limits["pids"])
    if reservations.get("memory") is not None:
        host["mem_reservation"] = parse_bytes(reservations["memory"], f"{where}: deploy.resources.reservations.memory")


def keys_table() -> str:
    """The README's table of every service key of the Compose Specification, in three groups."""
    rows = ["| service key | what a test run does |", "|---|---|"]
    rows += [f"| `{key}` | honoured{': ' + how if how else ''} |" for key, how in sorted(HONOURED.items())]
    rows += [f"| `{key}` | accepted, not applied: {why} |" for key, why in sorted(ACCEPTED.items())]
    rows += [f"| `{key}` | refused: {why} |" for key, why in sorted(REFUSED.items())]
    return "\n".join(rows)
