"""The developer loop: a session's app or stack left running for the next ``pytest`` run, which
attaches to it when nothing it runs changed.

A *slot* is what one project's session runs (its folder, the app or the compose files, the
engine, the pytest-xdist worker): one reusable thing per slot. Its *key* is what runs there: the
image IDs, every service as the compose file defines it after interpolation, the app's resolved
options. The same key: the next run attaches, after the same readiness check as a start. Another
key: the old one is removed, a new one started, and what differed is said. A run holds the
slot's lock while it uses it, so a second run at the same time starts its own instead; the lock
goes with the process, so a run killed while attached leaves the stack reusable.

>>> with AppManager.connect() as apps, Reuse(apps, Path.cwd()) as reuse:
...     app = reuse.app(apps.image(BuildSpec(".")), AppOptions.of(health_path="/health"))
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core import state_files
from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.engine import cleanup
from pytest_dockapp.run.app import DockApp
from pytest_dockapp.run.options import AppOptions, RunContext
from pytest_dockapp.run.readiness.wait import ProbeTarget, WaitPlan, wait_ready
from pytest_dockapp.services.stack import Stack

if TYPE_CHECKING:
    import docker

    from pytest_dockapp.core.locks import FileLock
    from pytest_dockapp.run.images import Image
    from pytest_dockapp.run.manager import AppManager

#: The environment variables read as "this is a CI job": reuse is off there unless forced.
CI_VARIABLES = (
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "JENKINS_URL",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "BITBUCKET_BUILD_NUMBER",
    "CODEBUILD_BUILD_ID",
)


def ci_variable(environ: Mapping[str, str] | None = None) -> str | None:
    """The first of :data:`CI_VARIABLES` set (and not ``false`` or ``0``), if any."""
    env = os.environ if environ is None else environ
    for name in CI_VARIABLES:
        if env.get(name, "").strip().lower() not in ("", "0", "false", "no", "off"):
            return name
    return None


def _digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ReuseKey:
    """Where a reusable app or stack lives (``slot``), and what it runs (``inputs``)."""

    slot: str
    project: str  # the project's folder: what ``--dockapp-down`` removes
    what: str  # as the summary names it: "app image:tag", "stack compose.yaml"
    inputs: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.inputs).encode()).hexdigest()[:16]

    def changes(self, old: Mapping[str, str]) -> list[str]:
        """What differs from the ``old`` inputs, one short phrase each."""
        now = dict(self.inputs)
        return [
            f"{name} {old.get(name) or 'none'} → {now.get(name) or 'none'}"
            for name in sorted(set(now) | set(old))
            if now.get(name) != old.get(name)
        ]

    def labels(self) -> dict[str, str]:
        return {cleanup.REUSE: self.slot, cleanup.REUSE_KEY: self.key, cleanup.REUSE_PROJECT: self.project}


def _slot(*parts: object) -> str:
    """One slot per host too: the lock and the record of the last run are this machine's files."""
    return hashlib.sha256(json.dumps([socket.gethostname(), *map(str, parts)]).encode()).hexdigest()[:12]


def _session_inputs(manager: AppManager) -> list[tuple[str, str]]:
    o = manager.options
    return [("engine", manager.endpoint.url), ("publish", _digest((o.host_ip, o.connect_host, o.ready)))]


def app_key(manager: AppManager, project: Path, image: Image, options: AppOptions, worker: str = "") -> ReuseKey:
    """The slot and key of a project's session app."""
    slot = _slot("app", project, image.name, manager.endpoint.url, worker)
    inputs = [("image", image.id.removeprefix("sha256:")[:12]), ("options", _digest(options))]
    return ReuseKey(slot, str(project), f"app {image.name}", tuple(inputs + _session_inputs(manager)))


def stack_key(manager: AppManager, project: Path, stack: Stack, worker: str = "") -> ReuseKey:
    """The slot and key of a project's session stack (its images built)."""
    files = [str(f) for f in stack.project.files]
    slot = _slot("stack", project, files, stack.main_name, manager.endpoint.url, worker)
    inputs = [("app options", _digest((sorted(stack.main_options.items()), stack.timeout, stack.host_ports)))]
    for name, svc in sorted(stack.project.services.items()):
        inputs.append((f"service {name}", _digest(svc)))
        image = stack.images.get(name)
        if image is not None:
            inputs.append((f"image of {name}", image.id.removeprefix("sha256:")[:12]))
    where = " + ".join(os.path.relpath(f, project) for f in files)
    return ReuseKey(slot, str(project), f"stack {where}", tuple(inputs + _session_inputs(manager)))


class Reuse:
    """The reusable app and stack of one session: each slot's lock, record and replacement.
    :attr:`lines` says what happened, for the session's summary; :meth:`close` leaves what it
    started or attached running and records when it was last used."""

    def __init__(self, manager: AppManager, project: Path, worker: str = ""):
        self.manager = manager
        self.project = project.resolve()
        self.worker = worker
        self.lines: list[str] = []
        self._held: dict[str, FileLock] = {}

    def __enter__(self) -> Reuse:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the session app -------------------------------------------------------------------------

    def app(self, image: Image, options: AppOptions) -> DockApp:
        """The session app: attached to when the last run left one with this key, else started
        and left running at the end (one of this run's own when another run holds the slot)."""
        key = app_key(self.manager, self.project, image, options, self.worker)
        if not self._acquire(key):
            return self.manager.start(image, options)
        record, _ = self._usable(key)
        if record is not None:
            app = DockApp.from_record(self.manager.client, record["app"])
            plan = WaitPlan(options.ready, options.health_path, options.timeout)
            why, seconds = self._recheck([(app, plan)])
            if why is None:
                self._attached(key, record, seconds)
                self.manager.pinned_by_containers([image])
                return app
            self._replace(key, f"{why}, so it was replaced")
        runner = self.manager.run(image, options, RunContext(owner=self._owner(key)), track=False)
        app = self.manager.start_runner(runner)
        self._save(key, {"app": app.record()})
        return app

    # -- the session stack -----------------------------------------------------------------------

    def stack(self, stack: Stack, *, reset: bool = False, check: Callable[[Stack], object] = Stack.build) -> Stack:
        """``stack`` (built, not started) as the last run left it running when its key is the
        same; when only some services changed (a rebuilt app), those and what depends on them
        start anew and the rest is kept; else started under the slot's name and labels. Either
        way it is left running at the end. With ``reset`` (the session seeds it: ``dockapp_clean``),
        its stateful services are put back as they were when it started, so each run seeds anew.
        ``check`` builds it (and may hold its images to more, as ``--dockapp-expect-cached`` does)."""
        with self.manager.leases_held() as pinned:
            check(stack)
            reused = self._stack(stack, reset)
            if reused is not stack:  # the reusable one runs on after the session: it pins the images
                pinned += stack.images.values()
            return reused

    def _stack(self, stack: Stack, reset: bool) -> Stack:
        key = stack_key(self.manager, self.project, stack, self.worker)
        if not self._acquire(key):
            return stack.start()
        record, again = self._usable(key, lambda old: _to_restart(stack, key, old))
        if record is not None:
            attached = stack.rejoin(record["stack"], self._owner(key))
            kept = [(app, _plan(stack, name)) for name, app in attached.services.items() if name not in again]
            why, seconds = self._recheck(kept)
            if why is None and reset:
                why = _back_to_start(attached)
            if why is None and again:
                try:
                    attached.restart(again)
                except DockappError as exc:
                    why = f"{', '.join(sorted(again))} could not be started in it ({exc.what})"
            if why is None:
                if again:
                    self._save(key, {"stack": attached.record()})
                else:
                    self._attached(key, record, seconds)
                return attached
            self._replace(key, f"{why}, so it was replaced")
        reusable = stack.reusable(self._owner(key), f"dockapp-{stack.project.name[:30]}-reuse-{key.slot[:8]}")
        try:
            reusable.start()
            if reset:
                from pytest_dockapp.services.state import StackState  # the clean-state kinds: 10 ms of imports

                StackState.of(reusable, strict=False).keep_as_started()
        except BaseException:
            cleanup.remove_labelled(self.manager.client, f"{cleanup.REUSE}={key.slot}")
            raise
        self._save(key, {"stack": reusable.record()})
        return reusable

    # -- what both share ---------------------------------------------------------------------------

    def _owner(self, key: ReuseKey) -> cleanup.Owner:
        base = self.manager.owner
        return cleanup.Owner(extra={**base.extra, **key.labels()})

    def _acquire(self, key: ReuseKey) -> bool:
        """Take the slot's lock for the rest of the session; False when another run holds it."""
        from pytest_dockapp.core.locks import LockTimeout

        if key.slot in self._held:
            return True
        path = cleanup.reuse_lock(key.slot)
        try:
            lock = cleanup.slot_lock(key.slot)
            lock.acquire()
        except LockTimeout:
            self.lines.append(
                f"reuse: another pytest run is using the reusable {key.what}; this run started its own and "
                "removes it at its end"
            )
            return False
        except OSError as exc:
            self.lines.append(f"reuse: off for the {key.what}: its lock file {path} cannot be written ({exc})")
            return False
        self._held[key.slot] = lock
        return True

    def _record(self, key: ReuseKey) -> dict[str, Any]:
        entry = state_files.load(state_files.cache_file(cleanup.REUSE_FILE)).get(key.slot)
        return entry if isinstance(entry, dict) else {}

    def _usable(
        self, key: ReuseKey, partly: Callable[[Mapping[str, str]], set[str] | None] = lambda old: None
    ) -> tuple[dict[str, Any] | None, set[str]]:
        """The slot's record, if all its containers run and it runs ``key`` (or, by ``partly``, the
        key of a stack whose changed services can start anew alone), with those services; else
        None, with the old resources removed and the reason said."""
        record = self._record(key)
        found = self._labelled(key)
        if not found and not record:
            self.lines.append(f"reuse: started the {key.what}; it stays running for the next run")
            return None, set()
        if not found:
            self.lines.append(f"reuse: started the {key.what} (the last one is gone); it stays running")
            return None, set()
        if not record.get("key"):
            self._replace(key, "has no record on this machine (another machine's, or the cache was cleared)")
            return None, set()
        ids = [a["id"] for a in _record_apps(record).values()]
        stopped = [c["Names"][0].lstrip("/") for c in found if c["Id"] in ids and c.get("State") != "running"]
        if stopped or any(i not in {c["Id"] for c in found} for i in ids):
            why = f"{', '.join(stopped)} stopped" if stopped else "a container of it was removed"
            self._replace(key, f"{why} since the last run, so it was replaced")
            return None, set()
        if record["key"] == key.key:
            return record, set()
        changes = "; ".join(key.changes(record.get("inputs") or {})) or "its key"
        again = partly(record.get("inputs") or {})
        if again is not None:
            self.lines.append(
                f"reuse: the {key.what} changed since the last run: {changes}; started {', '.join(sorted(again))} "
                "anew and kept the rest running"
            )
            return record, again
        self._replace(key, f"changed since the last run: {changes}")
        return None, set()

    def _labelled(self, key: ReuseKey) -> list[dict[str, Any]]:
        flt = {"label": f"{cleanup.REUSE}={key.slot}"}
        found: list[dict[str, Any]] = self.manager.client.api.containers(all=True, filters=flt)
        return found

    def _recheck(self, apps: list[tuple[DockApp, WaitPlan]]) -> tuple[str | None, float]:
        """Wait for each app as a start does, all at once (three services: 14 ms one after the other,
        6 together): why one is not ready (None when all are), and the seconds it took."""
        from concurrent.futures import ThreadPoolExecutor

        def check(app: DockApp, plan: WaitPlan) -> str | None:
            try:
                app.readiness = wait_ready(
                    self.manager.client,
                    app.container.id,
                    ProbeTarget(app.host, app.port, app.container_port),
                    plan.for_engine(podman=self.manager.podman),
                    attrs=app.container.attrs,  # inspected by the attach a moment ago: one call less each
                    name=app.name,
                )
            except DockappError as exc:
                return f"{app.name} is not ready ({exc.what})"
            return None

        begin = time.perf_counter()
        if len(apps) <= 1:
            why = check(*apps[0]) if apps else None
        else:
            with ThreadPoolExecutor(max_workers=len(apps), thread_name_prefix="dockapp-recheck") as pool:
                why = next(filter(None, pool.map(lambda pair: check(*pair), apps)), None)
        return why, time.perf_counter() - begin

    def _attached(self, key: ReuseKey, record: dict[str, Any], seconds: float) -> None:
        idle = time.time() - float(record.get("last_used") or time.time())
        self.lines.append(
            f"reuse: attached to the {key.what} the last run left (idle {_ago(idle)}; ready check "
            f"{seconds:.2f}s); no build, no start"
        )

    def _replace(self, key: ReuseKey, why: str) -> None:
        self.lines.append(f"reuse: the {key.what} {why}")
        failed = cleanup.remove_labelled(self.manager.client, f"{cleanup.REUSE}={key.slot}")
        if failed:
            raise DockappError(
                f"the old reusable {key.what} could not be removed",
                evidence="\n".join(failed),
                hint="remove it by hand (docker rm -f), or run pytest --dockapp-down",
            )

    def _save(self, key: ReuseKey, what: dict[str, Any]) -> None:
        entry = {"key": key.key, "inputs": dict(key.inputs), "last_used": time.time(), **what}
        state_files.update(state_files.cache_file(cleanup.REUSE_FILE), lambda data: data.__setitem__(key.slot, entry))

    def close(self) -> None:
        """Record that each slot this session held was used until now, and let it go."""

        def touch(data: dict[str, Any]) -> None:
            for slot in self._held:
                if isinstance(data.get(slot), dict):
                    data[slot]["last_used"] = time.time()

        if self._held:
            state_files.update(state_files.cache_file(cleanup.REUSE_FILE), touch)
        for lock in self._held.values():
            lock.release()
        self._held.clear()


def _record_apps(record: Mapping[str, Any]) -> dict[str, Any]:
    """The app records of a slot's record, by name (its service's, or ``app``)."""
    if "app" in record:
        return {"app": record["app"]}
    stack = record.get("stack") or {}
    return {**(stack.get("services") or {}), **(stack.get("completed") or {})}


def _to_restart(stack: Stack, key: ReuseKey, old: Mapping[str, str]) -> set[str] | None:
    """The services of ``stack`` to start anew when its inputs were ``old``: those that changed
    and those that depend on them; None when all must (the engine, the publish address, or
    every service changed)."""
    now = dict(key.inputs)
    names: set[str] = set()
    for item in (n for n in set(now) | set(old) if now.get(n) != old.get(n)):
        if item.startswith("service ") and item[8:] in stack.project.services:
            names.add(item[8:])
        elif item.startswith("image of ") and item[9:] in stack.project.services:
            names.add(item[9:])
        elif item == "app options":
            names.add(stack.main_name)
        else:
            return None
    grew = True
    while grew:  # and what depends on them, or shares their network namespace
        more = {
            n
            for n, svc in stack.project.services.items()
            if n not in names and (names & set(svc.depends_on) or (svc.network_mode or "")[8:] in names)
        }
        names |= more
        grew = bool(more)
    return names if names and names != set(stack.order) else None


def _back_to_start(stack: Stack) -> str | None:
    """Put the stack's stateful services back as they started; None, or why that failed."""
    from pytest_dockapp.services.state import StackState

    try:
        StackState.of(stack, strict=False).back_to_start()
    except DockappError as exc:
        return f"its data could not be put back as it started ({exc.what})"
    return None


def _plan(stack: Stack, name: str) -> WaitPlan:
    """The readiness a start of ``stack``'s service ``name`` waits for."""
    main = stack.main_options if name == stack.main_name else {}
    ready = main.get("ready") or stack.manager.options.ready
    timeout = stack.timeout if stack.timeout is not None else WaitPlan().timeout
    return WaitPlan(ready, main.get("health_path"), timeout)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _forget(slot: str) -> None:
    state_files.update(state_files.cache_file(cleanup.REUSE_FILE), lambda data: data.pop(slot, None))


def down(client: docker.DockerClient, project: Path) -> list[str]:
    """Remove every reusable app and stack of ``project`` on this engine (``--dockapp-down``),
    but one a live run is using; one line per slot says what happened."""
    folder = str(project.resolve())
    flt = {"label": f"{cleanup.REUSE_PROJECT}={folder}"}
    slots: dict[str, list[str]] = {}
    here, elsewhere = socket.gethostname(), 0
    for c in client.api.containers(all=True, filters=flt):
        labels = c.get("Labels") or {}
        if labels.get(cleanup.HOST) != here:
            elsewhere += 1  # another machine's, which may be using it: its own --dockapp-down removes it
            continue
        slots.setdefault(labels.get(cleanup.REUSE, ""), []).append(c["Names"][0].lstrip("/"))
    for n in client.api.networks(filters=flt):
        if (n.get("Labels") or {}).get(cleanup.HOST) == here:
            slots.setdefault((n.get("Labels") or {}).get(cleanup.REUSE, ""), [])
    lines = [f"kept {elsewhere} containers another host left for reuse"] if elsewhere else []
    for slot, names in sorted(slots.items()):
        what = ", ".join(names) or "its network"
        if cleanup.slot_in_use(slot):
            lines.append(f"kept {what}: a pytest run is using it now")
            continue
        failed = cleanup.remove_labelled(client, f"{cleanup.REUSE}={slot}")
        _forget(slot)
        lines.append(f"removed {what}" + (f" (could not remove: {', '.join(failed)})" if failed else ""))
    return lines or [f"no reusable app or stack of {folder} on this engine"]
