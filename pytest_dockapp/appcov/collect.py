"""Coverage of the app's own code, from inside its containers, without changing the image.

Only apps built from the project's Dockerfiles are watched (the manager gives no other to an
instrument): PostgreSQL and Redis never are. Before an app starts, what its language needs is
copied in (a copy works on a remote engine, where a bind mount would not); before its container
is removed, the app is asked to write what it ran, which is copied out and mapped back to the
repository's files by the Dockerfile's ``COPY`` lines.

* **Node**: ``NODE_V8_COVERAGE`` and a ``--require``'d hook that, when a trigger file appears,
  writes the coverage so far (``v8.takeCoverage()``); a process that exits writes its own.
* **Python**: this machine's coverage.py, copied in and started by a ``sitecustomize``
  (:mod:`pytest_dockapp.appcov.python`); its data also goes where pytest-cov combines its own,
  so that ``pytest --cov`` reports the app's lines.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.appcov import python, v8
from pytest_dockapp.appcov.paths import PathMap
from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.run.options import InjectedFile, Preparation

if TYPE_CHECKING:
    import docker

    from pytest_dockapp.builds.record import BuildRecord

#: In the container: what is copied in, the trigger, and what the app writes.
HOME = "/tmp/.dockapp-cov"
#: On a watched container: its language and path map, for a process that did not prepare it.
LABEL = "org.pytest-dockapp.cov"
HOOK = """// pytest-dockapp: write V8's coverage so far when the trigger file changes.
const fs = require("fs"), path = require("path"), v8 = require("v8");
const home = path.dirname(process.env.NODE_V8_COVERAGE);
let seen = 0;
setInterval(() => {
  let mtime;
  try { mtime = fs.statSync(path.join(home, "flush")).mtimeMs; } catch { return; }
  if (mtime <= seen) return;
  seen = mtime;
  v8.takeCoverage();
  fs.writeFileSync(path.join(home, `flushed-${process.pid}-${Math.round(mtime)}`), "");
}, 50).unref();
"""
#: How long the app has to write its coverage once asked (a takeCoverage of a small app: ms).
FLUSH_WAIT = 5.0


class CoverageError(DockappError):
    """The app's coverage cannot be measured as it is."""


def language(image: Mapping[str, Any]) -> str | None:
    """``node``, ``python`` or None, by the image's command and environment."""
    config = image.get("Config") or {}
    words = [posixpath.basename(str(w)) for w in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]]
    env = {str(e).partition("=")[0] for e in config.get("Env") or []}
    if any(w in ("node", "nodejs", "npm", "npx", "yarn") for w in words) or "NODE_VERSION" in env:
        return "node"
    if python.is_python(words, env):
        return "python"
    return None


@dataclass(frozen=True)
class CoverageOptions:
    """How the session measures: ``strict`` (asked for: an app of an unknown language is an
    error, not a line of the summary), and pytest-cov's data file and branch setting, if it runs."""

    strict: bool = True
    pytest_cov_data: str | None = None
    branch: bool = False


class AppCoverage:
    """The session's coverage of its apps' own code: :meth:`prepare` and :meth:`collect` per
    container (an :class:`~pytest_dockapp.run.options.Instrument`), then the counts per file of
    the repository in :attr:`files`; :attr:`problems` says what could not be measured."""

    def __init__(self, options: CoverageOptions | None = None) -> None:
        self.options = options or CoverageOptions()
        self.files: dict[Path, v8.Hits] = {}
        self.problems: list[str] = []
        self.containers = 0
        self.seconds = 0.0  # spent taking coverage out of containers
        self._watched: dict[str, tuple[str, PathMap]] = {}  # by container name: language and map
        self._lock = threading.Lock()
        self._written = 0  # data files given to pytest-cov

    def prepare(
        self, name: str, build: BuildRecord, image: Mapping[str, Any], env: Mapping[str, str], read_only: bool
    ) -> Preparation | None:
        kind = language(image)
        image_name = build.tag or build.image_id[:19]
        if kind is None or read_only:
            config = image.get("Config") or {}
            if kind is None:
                what = f"cannot tell the language of image {image_name}"
                evidence = f"ENTRYPOINT {config.get('Entrypoint')}, CMD {config.get('Cmd')}"
                hint = "coverage is measured for Node apps (a CMD or ENTRYPOINT that runs node, npm or yarn) and "
                hint += "Python apps (python, gunicorn, uvicorn...); drop --dockapp-cov for this app"
            else:
                what = f"{name} from {image_name} has a read-only root filesystem"
                evidence = "read_only: true"
                hint = "what coverage needs is copied into the container before it starts, and the engine copies "
                hint += "nothing into a read-only one: drop read_only for the coverage run, or --dockapp-cov"
            if not self.options.strict:
                with self._lock:
                    self.problems.append(f"{name}: {what}; not measured")
                return None
            raise CoverageError(
                f"{what}, so its coverage cannot be measured", evidence=evidence, evidence_title="the app", hint=hint
            )
        paths = PathMap.read(build.dockerfile, build.context, build.target, build.build_args)
        if kind == "python":
            prepared = python.preparation(HOME, env, python.env_of(image), self.options.branch)
        else:
            node_options = " ".join(filter(None, [env.get("NODE_OPTIONS", ""), f"--require {HOME}/hook.js"]))
            # the app's user may be anyone: it writes its coverage and the flush markers in HOME
            files = (InjectedFile(HOME, "folder", "", mode=0o777), InjectedFile(f"{HOME}/hook.js", "content", HOOK))
            prepared = Preparation(
                env=(("NODE_V8_COVERAGE", f"{HOME}/v8"), ("NODE_OPTIONS", node_options)), files=files
            )
        with self._lock:
            self._watched[name] = (kind, paths)
        label = json.dumps({"kind": kind, "context": str(paths.context), "copies": paths.copies})
        return dataclasses.replace(prepared, labels=((LABEL, label),))

    def collect(self, client: docker.DockerClient, container_id: str, name: str) -> None:
        with self._lock:
            kind, paths = self._watched.pop(name, ("", PathMap(Path("."), ())))
        if not kind:
            return
        began = time.perf_counter()
        try:
            _flush(client, container_id)
            if kind == "node":
                found = _node(client, container_id, paths)
            else:
                found = self._python(client, container_id, paths, name)
        except Exception as exc:  # the app's teardown goes on: the summary says what is missing
            with self._lock:
                self.problems.append(f"{name}: its coverage could not be taken out ({type(exc).__name__}: {exc})")
            return
        with self._lock:
            self.containers += 1
            self.seconds += time.perf_counter() - began
            if not found:
                self.problems.append(
                    f"{name}: no file it ran maps to one of the repository by the Dockerfile's COPY lines "
                    f"({', '.join(f'{a} <- {b}' for a, b in paths.copies) or 'none from the context'})"
                )
            for path, hits in found.items():
                v8.add(self.files, path, hits)

    def collect_labelled(self, client: docker.DockerClient, label: str) -> None:
        """Take out the coverage of the watched containers with ``label`` that another process
        prepared (the stack the pytest-xdist workers share, before the controller removes it)."""
        for c in client.api.containers(all=True, filters={"label": [label, LABEL]}):
            try:
                data = json.loads((c.get("Labels") or {})[LABEL])
                paths = PathMap(Path(data["context"]), tuple((a, b) for a, b in data["copies"]))
            except (KeyError, TypeError, ValueError):
                continue
            name = c["Names"][0].lstrip("/")
            with self._lock:
                self._watched[name] = (str(data.get("kind") or ""), paths)
            self.collect(client, c["Id"], name)

    def _python(self, client: docker.DockerClient, container_id: str, paths: PathMap, name: str) -> dict[Path, v8.Hits]:
        blobs, error = [], None
        for member, blob in _files(client, container_id, HOME):
            base = posixpath.basename(member)
            if base == "error":
                error = blob
            elif base.startswith(".coverage."):
                blobs.append(blob)
        if error is not None:
            with self._lock:
                self.problems.append(f"{name}: {python.failure(error)}")
        data = python.remap(blobs, paths) if blobs else None
        if data is None:
            return {}
        if self.options.pytest_cov_data:
            with self._lock:
                self._written += 1
                suffix = f"dockapp.{os.getpid()}.{self._written}"
            python.write_for_pytest_cov(data, self.options.pytest_cov_data, suffix)
        return python.line_hits(data)

    def to_json(self) -> dict[str, Any]:
        """What :meth:`merge` takes (a pytest-xdist worker's coverage, sent to the controller)."""
        with self._lock:
            files = {str(p): {str(n): c for n, c in hits.items()} for p, hits in self.files.items()}
            return {
                "files": files,
                "problems": list(self.problems),
                "containers": self.containers,
                "seconds": self.seconds,
            }

    def merge(self, data: Mapping[str, Any]) -> None:
        """Add another session's coverage (:meth:`to_json`) to this one's."""
        with self._lock:
            for path, hits in (data.get("files") or {}).items():
                v8.add(self.files, Path(path), {int(n): int(c) for n, c in hits.items()})
            self.problems += list(data.get("problems") or [])
            self.containers += int(data.get("containers") or 0)
            self.seconds += float(data.get("seconds") or 0.0)

    def summary(self, root: Path) -> list[str]:
        """``app coverage: server.js 87 % (missed 40-44)``, one line per file, and the problems."""
        lines = []
        for path, hits in sorted(self.files.items()):
            missed = [n for n, c in hits.items() if c == 0]
            percent = 100.0 * (len(hits) - len(missed)) / len(hits) if hits else 100.0
            name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            lines.append(f"app coverage: {name} {percent:.0f} %" + (f" (missed {v8.ranges(missed)})" if missed else ""))
        if self.containers == 0 and not self.problems:
            lines.append("app coverage: no watched app ran (only apps built from the project's Dockerfiles are)")
        elif self.containers:
            many = "s" if self.containers != 1 else ""
            lines.append(f"app coverage: taken from {self.containers} container{many} in {self.seconds:.2f}s in all")
        return lines + [f"app coverage: {p}" for p in self.problems]


def _node(client: docker.DockerClient, container_id: str, paths: PathMap) -> dict[Path, v8.Hits]:
    """The V8 coverage files the app wrote, as lines of the repository's files."""
    found: dict[Path, v8.Hits] = {}
    for member, data in _files(client, container_id, f"{HOME}/v8"):
        if not member.endswith(".json"):
            continue
        for script in json.loads(data).get("result") or []:
            path = v8.script_path(str(script.get("url") or ""))
            repo = paths.to_repo(path) if path is not None else None
            if repo is None:
                continue
            try:
                text = repo.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            v8.add(found, repo, v8.line_hits(text, script.get("functions") or []))
    return found


def _flush(client: docker.DockerClient, container_id: str) -> None:
    """Ask a running app to write what it ran so far (the hooks watch a trigger file), and wait
    until it says it did; an app that ended wrote its own at its exit."""
    if not client.api.inspect_container(container_id)["State"].get("Running"):
        return
    before = _names(client, container_id)
    stamp = io.BytesIO()
    with tarfile.open(fileobj=stamp, mode="w") as archive:
        info = tarfile.TarInfo("flush")
        info.mtime, info.mode = int(time.time()) + 1, 0o644
        archive.addfile(info, io.BytesIO(b""))
    client.api.put_archive(container_id, HOME, stamp.getvalue())
    deadline = time.monotonic() + FLUSH_WAIT
    while time.monotonic() < deadline:
        if any(n.startswith("flushed-") or n == "error" for n in _names(client, container_id) - before):
            return
        time.sleep(0.05)


def _names(client: docker.DockerClient, container_id: str) -> set[str]:
    return {posixpath.basename(name) for name, _ in _files(client, container_id, HOME, data=False)}


def _files(client: docker.DockerClient, container_id: str, path: str, data: bool = True) -> list[tuple[str, bytes]]:
    """The regular files under ``path`` in the container, with their content."""
    import docker.errors

    try:
        stream, _ = client.api.get_archive(container_id, path)
    except docker.errors.NotFound:
        return []
    out = []
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r") as archive:
        for member in archive.getmembers():
            if member.isfile():
                extracted = archive.extractfile(member) if data else None
                out.append((member.name, extracted.read() if extracted is not None else b""))
    return out
