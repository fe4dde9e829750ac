"""Labels on everything we create, and the sweep that removes what a killed run left.

No reaper container is needed (Ryuk cannot be pulled in air-gapped CI): every
resource carries its creator's host, pid and process start time, so the next
session can tell a dead owner from a live one and remove only the dead one's
resources. Resources of another host are removed only past a maximum age.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core.locks import FileLock, LockTimeout
from pytest_dockapp.core.state_files import cache_file, load

if TYPE_CHECKING:
    import docker

PREFIX = "org.pytest-dockapp."
OWNER = PREFIX + "owner"
SESSION = PREFIX + "session"
HOST = PREFIX + "host"
PID = PREFIX + "pid"
PID_START = PREFIX + "pid-start"
CREATED = PREFIX + "created"
KIND = PREFIX + "kind"
PIDNS = PREFIX + "pidns"  # inode of the owner's PID namespace: its pid means something only there
BOOT = PREFIX + "boot-id"  # the owner's kernel boot: a pid of another boot is another process
#: Labels of what a session left running on purpose for the next run (``--dockapp-reuse``): the
#: slot it fills (project, kind, files, engine), the key of what it runs, the project's folder.
REUSE = PREFIX + "reuse"
REUSE_KEY = PREFIX + "reuse-key"
REUSE_PROJECT = PREFIX + "reuse-project"
#: The state file that says when each reusable slot was last used (by slot).
REUSE_FILE = "reuse.json"
#: How long a reusable app or stack may stay unused before the next run's sweep removes it.
DEFAULT_REUSE_TTL = 2 * 3600.0
KEPT = "-kept"  # name suffix of containers --dockapp-keep left running on purpose
OWNER_VALUE = "pytest-dockapp"
#: Repository of the temporary images of cache checks; their tags name the owning process.
SCRATCH_REPO = "pytest-dockapp/cache-check"
#: Repository of cache checks' warm builds: kept, one tag per context, as the layer cache.
WARM_REPO = "pytest-dockapp/cache-warm"
_SCRATCH_TAG = re.compile(
    r"^(?P<host>[A-Za-z0-9_.-]+)-(?P<pid>\d+)-(?P<start>\d+)(?:-ns(?P<pidns>\d+))?-(?P<session>[0-9a-f]+)-\d+"
)

#: Default age past which resources of another host (or an unknown owner) are swept.
DEFAULT_SWEEP_AGE = 6 * 3600.0


def process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (guards against pid reuse), or "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def parse_age(value: str | float | None) -> float | None:
    """``"off"`` (None: no sweep), seconds, or a number with an ``s``, ``m``, ``h`` or ``d`` suffix."""
    from pytest_dockapp.core.errors import ConfigurationError

    text = str(value).strip().lower()
    if text in ("off", "never", "none"):
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also false for nan
        raise ConfigurationError(f"{value!r} is not an age", hint="valid: off, 3600, 90m, 6h, 2d")
    return seconds


def pid_namespace() -> str:
    """The inode of this process's PID namespace ("" where it cannot be read)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def boot_id() -> str:
    """This kernel's boot id ("" where it cannot be read)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def process_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` is alive and, when ``start`` is known, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    return not start or not process_start(pid) or process_start(pid) == start


#: Extra labels for every container, network and lease, e.g. a CI job id: ``k=v,k2=v2``.
LABELS_ENV = "DOCKAPP_LABELS"


def extra_labels(text: str | None = None) -> dict[str, str]:
    """The labels ``DOCKAPP_LABELS`` (or ``text``) asks for."""
    from pytest_dockapp.core.errors import ConfigurationError

    raw = os.environ.get(LABELS_ENV, "") if text is None else text
    out = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigurationError(
                f"{LABELS_ENV} entry {item!r} is not KEY=VALUE",
                hint=f"e.g. {LABELS_ENV}=ci.job=1234,ci.pipeline=56",
            )
        out[key.strip()] = value.strip()
    return out


@dataclass
class Owner:
    """Who owns a resource: one test session (id, host, pid) on one engine, as its labels say."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    extra: dict[str, str] = field(default_factory=extra_labels)

    def scratch_tag(self, n: int) -> str:
        """A tag for a temporary image that says who owns it.

        Temporary images get no labels: on the classic builder every label is one more build
        step, and one that misses on every build since the values are per session. So the tag
        carries what the sweep needs: host, pid and the pid's start time.
        """
        return (
            f"{SCRATCH_REPO}:{_tag_host(self.host)}-{self.pid}-{process_start(self.pid) or 0}"
            f"-ns{pid_namespace() or 0}-{self.id}-{n}"
        )

    def labels(self, kind: str) -> dict[str, str]:
        """Labels for a resource of ``kind`` (container, network, volume, image)."""
        return {
            **self.extra,
            OWNER: OWNER_VALUE,
            SESSION: self.id,
            HOST: self.host,
            PID: str(self.pid),
            PID_START: process_start(self.pid),
            PIDNS: pid_namespace(),
            BOOT: boot_id(),
            CREATED: f"{time.time():.0f}",
            KIND: kind,
        }


@dataclass
class SweepReport:
    """What a sweep removed, by kind."""

    containers: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)  # created-only containers that pinned an image
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    reusable: list[str] = field(default_factory=list)  # reusable apps and stacks idle past their TTL
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            len(self.containers)
            + len(self.leases)
            + len(self.networks)
            + len(self.volumes)
            + len(self.images)
            + len(self.reusable)
        )


def is_orphan(labels: dict[str, str], owner: Owner, max_age: float) -> bool:
    """Whether a resource with ``labels`` belongs to a dead session and may be removed."""
    if labels.get(OWNER) != OWNER_VALUE or labels.get(SESSION) == owner.id or REUSE in labels:
        return False  # a reusable stack outlives its creator on purpose: see reusable_idle
    try:
        age = time.time() - float(labels.get(CREATED, "0"))
    except ValueError:
        age = float("inf")
    if labels.get(HOST) == owner.host and _same_pid_space(labels):
        try:
            pid = int(labels.get(PID, ""))
        except ValueError:
            return age > max_age
        return not process_alive(pid, labels.get(PID_START, ""))
    # Another host, or the same host name seen from another PID namespace (CI jobs in
    # containers with host networking share it): the owner cannot be checked from here, so
    # only the age rule may remove it. Never remove on a guess.
    return age > max_age


def _same_pid_space(labels: dict[str, str]) -> bool:
    """Whether the owner's pid can be checked from here: same PID namespace, same boot."""
    ns, boot = pid_namespace(), boot_id()
    return bool(ns and boot) and labels.get(PIDNS) == ns and labels.get(BOOT) == boot


def reuse_lock(slot: str) -> Path:
    """The lock file a run holds while it uses (or starts) the reusable app or stack of ``slot``."""
    return cache_file(f"reuse/{slot}.lock")


def slot_lock(slot: str) -> FileLock:
    """The lock of ``slot``, taken at once or not at all (``LockTimeout``); its folder made (``OSError``)."""
    path = reuse_lock(slot)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=0)


def slot_in_use(slot: str) -> bool:
    """Whether a live run holds ``slot`` (its lock goes with the process, even on SIGKILL)."""
    try:
        with slot_lock(slot):
            return False
    except LockTimeout:
        return True
    except OSError:
        return False


def reusable_idle(
    labels: dict[str, str],
    ttl: float,
    owner: Owner,
    max_age: float = DEFAULT_SWEEP_AGE,
    records: dict[str, Any] | None = None,
) -> bool:
    """Whether the reusable resource with ``labels`` went unused for longer than ``ttl``: since
    the last run that used it ended (this machine's record, ``records`` where read already),
    else since it was created; a slot a live run holds is never idle. Another host's is used
    where this one cannot see: it goes by age alone, past ``max_age`` too (the rule for other
    hosts' leftovers)."""
    slot = labels.get(REUSE, "")
    if labels.get(HOST) != owner.host:
        try:
            return time.time() - float(labels.get(CREATED, "0")) > max(ttl, max_age)
        except ValueError:
            return False
    records = load(cache_file(REUSE_FILE)) if records is None else records
    entry = records.get(slot)
    used = entry.get("last_used") if isinstance(entry, dict) else None
    try:
        since = float(used if used is not None else labels.get(CREATED, "0"))
    except (TypeError, ValueError):
        since = 0.0
    return time.time() - since > ttl and not slot_in_use(slot)


def sweep(
    client: docker.DockerClient,
    owner: Owner,
    max_age: float = DEFAULT_SWEEP_AGE,
    *,
    kept: bool = False,
    reuse_ttl: float | None = DEFAULT_REUSE_TTL,
) -> SweepReport:
    """Remove containers, networks, volumes and temporary images of dead sessions. Containers
    that ``--dockapp-keep`` left on purpose (named ``*-kept``) go only past ``max_age``, or
    with ``kept``; reusable apps and stacks once unused for ``reuse_ttl`` (None: never)."""
    import docker.errors

    report = SweepReport()
    flt: dict[str, Any] = {"label": f"{OWNER}={OWNER_VALUE}"}

    def attempt(bucket: list[str], name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
            bucket.append(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            report.errors.append(f"{name}: {exc}")

    records: list[dict[str, Any]] = []  # this machine's record of reusable slots, read once per sweep

    def idle(labels: dict[str, str]) -> bool:
        if REUSE not in labels or reuse_ttl is None:
            return False
        if not records:
            records.append(load(cache_file(REUSE_FILE)))
        return reusable_idle(labels, reuse_ttl, owner, max_age, records[0])

    for c in client.api.containers(all=True, filters=flt):
        labels = c.get("Labels") or {}
        name = c["Names"][0].lstrip("/")
        if idle(labels):
            attempt(report.reusable, name, client.api.remove_container, c["Id"], force=True, v=True)
            continue
        if name.endswith(KEPT) and not kept:
            if is_orphan({**labels, HOST: ""}, owner, max_age):  # the age rule alone
                attempt(report.containers, name, client.api.remove_container, c["Id"], force=True, v=True)
            continue
        if is_orphan(labels, owner, max_age):
            bucket = report.leases if labels.get(KIND) == "lease" else report.containers
            attempt(bucket, name, client.api.remove_container, c["Id"], force=True, v=True)
    for n in client.api.networks(filters=flt):
        if is_orphan(n.get("Labels") or {}, owner, max_age) or idle(n.get("Labels") or {}):
            attempt(report.networks, n["Name"], client.api.remove_network, n["Id"])
    for v in (client.api.volumes(filters=flt) or {}).get("Volumes") or []:
        if is_orphan(v.get("Labels") or {}, owner, max_age) or idle(v.get("Labels") or {}):
            attempt(report.volumes, v["Name"], client.api.remove_volume, v["Name"])
    for img in client.api.images(name=SCRATCH_REPO):
        for tag in img.get("RepoTags") or []:
            if _scratch_orphan(normalize_tag(tag), img.get("Created", 0), owner, max_age):
                # pruning stops at parents shared with other images: the user's cache stays
                attempt(report.images, tag, client.api.remove_image, tag)
    return report


def normalize_tag(tag: str) -> str:
    """``tag`` without the registry podman puts before short names (``docker.io/``, ``localhost/``)."""
    first, slash, rest = tag.partition("/")
    return rest if slash and first in ("docker.io", "localhost") and "/" in rest else tag


def _tag_host(host: str) -> str:
    """``host`` as it may stand in an image tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", host)[:40] or "host"


def _scratch_orphan(tag: str, created: float, owner: Owner, max_age: float) -> bool:
    m = _SCRATCH_TAG.match(tag.rpartition(":")[2])
    if not tag.startswith(SCRATCH_REPO + ":") or m is None or m.group("session") == owner.id:
        return False
    labels = {
        OWNER: OWNER_VALUE,
        SESSION: m.group("session"),
        HOST: owner.host if m.group("host") == _tag_host(owner.host) else "",
        PID: m.group("pid"),
        PID_START: "" if m.group("start") == "0" else m.group("start"),
        PIDNS: m.group("pidns") or "",
        BOOT: boot_id(),  # a scratch image outlives no reboot that matters: its pid check stands
        CREATED: str(created),
    }
    return is_orphan(labels, owner, max_age)


def remove_container(client: docker.DockerClient, container_id: str) -> float:
    """Kill and remove a container with its anonymous volumes; returns the seconds it took.

    A forced remove sends SIGKILL: a test container holds nothing worth a graceful
    stop, and a PID 1 that ignores SIGTERM would otherwise cost the full stop timeout.
    """
    import docker.errors

    start = time.perf_counter()
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        # "removal already in progress" is someone else finishing the job for us.
        if "already in progress" not in str(exc):
            raise
    return time.perf_counter() - start


def remove_network(client: docker.DockerClient, network_id: str) -> None:
    """Disconnect whatever is still attached (fixture teardown order is not ours to choose), then remove."""
    import docker.errors

    try:
        attrs = client.api.inspect_network(network_id)
    except docker.errors.NotFound:
        return
    for container_id in attrs.get("Containers") or {}:
        with contextlib.suppress(docker.errors.APIError):  # the container may be gone meanwhile
            client.api.disconnect_container_from_network(container_id, network_id, force=True)
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_network(network_id)


def remove_labelled(client: docker.DockerClient, label: str) -> list[str]:
    """Remove every container, then network, then volume with ``label`` (``key=value``): a stack
    another process started, or a reusable one; returns the names that could not be removed."""
    import docker.errors

    flt = {"label": label}
    failed: list[str] = []
    for c in client.api.containers(all=True, filters=flt):
        try:
            remove_container(client, c["Id"])
        except docker.errors.APIError:
            failed.append(c["Names"][0].lstrip("/"))
    for n in client.api.networks(filters=flt):
        try:
            remove_network(client, n["Id"])
        except docker.errors.APIError:
            failed.append(n["Name"])
    for v in (client.api.volumes(filters=flt) or {}).get("Volumes") or []:
        try:
            client.api.remove_volume(v["Name"])
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            failed.append(v["Name"])
    return failed


def leftovers(client: docker.DockerClient, session_id: str | None = None) -> list[str]:
    """Names of containers and networks carrying our labels (of one session, if given)."""
    label = f"{SESSION}={session_id}" if session_id else f"{OWNER}={OWNER_VALUE}"
    names = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"label": label})]
    names += [n["Name"] for n in client.api.networks(filters={"label": label})]
    return names


#: Temporary folders of BuildKit builds (the image ID file, and secrets given as environment
#: variables). The name says who made them, so the next build can tell a killed run's folder.
BUILD_DIR_PREFIX = "dockapp-build-"
_BUILD_DIR = re.compile(rf"^{BUILD_DIR_PREFIX}(?P<pidns>\d+)-(?P<pid>\d+)-(?P<start>\d+)-")
#: Folders of the old form (``dockapp-iid-*``, no owner in the name) go after this age.
_UNOWNED_DIR_AGE = 24 * 3600.0


def build_dir_prefix() -> str:
    """The prefix of this process's build folders: PID namespace, pid and its start time."""
    pid = os.getpid()
    return f"{BUILD_DIR_PREFIX}{pid_namespace() or 0}-{pid}-{process_start(pid) or 0}-"


def sweep_build_dirs(folder: str | None = None) -> list[str]:
    """Remove the build folders of dead processes of this PID namespace (SIGKILL leaves them,
    with any secret file in them: trust III, 7), and unowned ones older than a day."""
    import shutil
    import tempfile

    root = folder or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        m = _BUILD_DIR.match(name)
        if m is not None:
            if m.group("pidns") != (pid_namespace() or "0"):
                continue  # another PID namespace's pid means nothing here
            start = "" if m.group("start") == "0" else m.group("start")
            if process_alive(int(m.group("pid")), start):
                continue
        elif name.startswith("dockapp-iid-"):
            try:
                if time.time() - os.stat(path).st_mtime < _UNOWNED_DIR_AGE:
                    continue
            except OSError:
                continue
        else:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
