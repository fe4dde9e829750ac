"""Building an image with either builder: the classic builder through the engine API (docker
SDK), BuildKit through the docker CLI; both give the same :class:`BuildRecord`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.builds.dockerfile import Dockerfile
from pytest_dockapp.builds.record import BuildRecord, ProgressCallback
from pytest_dockapp.builds.registry import RegistryCache
from pytest_dockapp.core.errors import BuildError, ConfigurationError, tail
from pytest_dockapp.core.redact import looks_secret, mask_values, redact, secret_values
from pytest_dockapp.engine.cleanup import build_dir_prefix, sweep_build_dirs
from pytest_dockapp.engine.client import BUILD_TIMEOUT, ENGINE_WATCH_EVERY, Builder, is_engine_failure, ping

if TYPE_CHECKING:
    import docker

    from pytest_dockapp.builds.mapper import StepMapper
    from pytest_dockapp.builds.output.classic import ClassicParser
    from pytest_dockapp.builds.output.plain import PlainParser
    from pytest_dockapp.builds.output.rawjson import RawJsonParser


def spec_digest(
    context: Path, dockerfile: Path, target: str | None, build_args: Mapping[str, str], builder: str
) -> str:
    """A digest of a whole build spec. Build-arg values enter only as their own SHA-256, so a
    secret is never written anywhere in clear, not even inside a short hash input."""
    args = sorted((k, hashlib.sha256(v.encode()).hexdigest()) for k, v in build_args.items())
    raw = json.dumps([str(context), str(dockerfile), target, args, builder])
    return hashlib.sha256(raw.encode()).hexdigest()


def default_tag(
    context: Path, dockerfile: Path, target: str | None, build_args: Mapping[str, str], builder: str
) -> str:
    """A stable tag per build spec (context, Dockerfile, target, build args, builder): reruns of
    the same spec replace it, and no two specs share it. Apps run by image ID all the same."""
    slug = re.sub(r"[^a-z0-9]+", "-", context.name.lower()).strip("-") or "app"
    return f"pytest-dockapp/{slug}:{spec_digest(context, dockerfile, target, build_args, builder)[:16]}"


def resolve_paths(context: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """Absolute context folder and Dockerfile, or a :class:`ConfigurationError` naming the fix."""
    ctx = Path(context).expanduser().resolve()
    if not ctx.is_dir():
        raise ConfigurationError(
            f"build context {ctx} is not a directory" + ("" if ctx.exists() else " (it does not exist)"),
            hint="set dockapp_context (ini, --dockapp-context or a dockapp_context fixture) to your app's folder",
        )
    df = Path(dockerfile) if dockerfile else Path("Dockerfile")
    df = (df if df.is_absolute() else ctx / df).resolve()
    return ctx, df


@dataclass(frozen=True)
class BuildSpec:
    """What to build: context folder, Dockerfile, build args, target stage and build secrets.
    Where the pipeline starts: :meth:`resolve` reads its paths once."""

    context: str | os.PathLike[str]
    dockerfile: str | os.PathLike[str] | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    #: BuildKit build secrets, ``{id: file path or environment variable name}``.
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: This build's own registry cache refs (a compose service's ``build.cache_from``/``cache_to``);
    #: None: the session's. They change where layers come from, not the image: not part of the key.
    registry: RegistryCache | None = None
    #: What ``RUN --mount=type=ssh`` reaches (a compose service's ``build.ssh``), ``{id: key file or
    #: agent socket}``; ``""``: the agent of ``SSH_AUTH_SOCK``. BuildKit only.
    ssh: Mapping[str, str] = field(default_factory=dict)

    def resolve(self) -> ResolvedSpec:
        """The spec with its context and Dockerfile as absolute paths (a clear error when the
        context is no folder), and its key, worked out once."""
        ctx, df = resolve_paths(self.context, self.dockerfile)
        parts = [str(ctx), str(df), sorted(self.build_args.items()), self.target, sorted(self.secrets)]
        raw = json.dumps(parts + ([sorted(self.ssh)] if self.ssh else []))  # the key of a build without it as it was
        return ResolvedSpec(self, ctx, df, hashlib.sha1(raw.encode()).hexdigest()[:16])

    def key(self) -> str:
        """What tells builds apart: the resolved paths, the build args, the target, the secrets' IDs."""
        return self.resolve().key


@dataclass(frozen=True)
class ResolvedSpec:
    """A :class:`BuildSpec` with its paths resolved and its key computed; the Dockerfile is read
    when first asked for, and once."""

    spec: BuildSpec
    context: Path
    dockerfile_path: Path
    key: str

    @functools.cached_property
    def dockerfile(self) -> Dockerfile:
        return Dockerfile.read(self.dockerfile_path)


def build_image(
    client: docker.DockerClient,
    spec: BuildSpec | ResolvedSpec,
    *,
    builder: Builder,
    tag: str | None = None,
    labels: Mapping[str, str] | None = None,
    on_event: ProgressCallback | None = None,
    cache_from: Sequence[str] = (),
    inline_cache: bool = False,
) -> BuildRecord:
    """Build an image and return its :class:`BuildRecord`.

    ``secrets`` are BuildKit build secrets, ``{id: source}``: a file path, or the name of an
    environment variable; a step reads one with ``RUN --mount=type=secret,id=<id>``, and it is
    never stored in the image. ``cache_from`` are images whose layers may serve as cache (on the
    classic builder they must be on the engine: pull them first); ``inline_cache`` writes
    BuildKit's cache metadata into the image, for a push that another runner's build imports.
    Raises :class:`BuildError` (or :class:`BaseImageUnavailableError`)
    with the failing step, its Dockerfile line and output tail.
    """
    resolved = spec if isinstance(spec, ResolvedSpec) else spec.resolve()  # paths and the Dockerfile, once
    build_args, target, secrets = resolved.spec.build_args, resolved.spec.target, resolved.spec.secrets
    _needs_buildkit(resolved.spec, builder)
    ctx, df_path = resolved.context, resolved.dockerfile_path
    args = dict(build_args or {})
    df = with_onbuild(client, resolved.dockerfile, args)
    flags = CacheFlags(tuple(cache_from), inline_cache and builder.name != "classic")
    if target:
        df.stage(target)  # fails early, naming the stages there are
    tag = tag or default_tag(ctx, df_path, target, args, builder.name)
    # Every line the builder prints is masked before anything reads it: progress, the step
    # record (kept in builds.json), errors and reprs all come from the parser (trust III, 4-6).
    known = known_secrets(args, secrets or {})

    def mask(text: str) -> str:
        return mask_values(text, known)

    # Only where something is built: 3 ms of imports a run that reuses its images does not pay.
    from pytest_dockapp.builds.failures import build_failure
    from pytest_dockapp.builds.output.classic import ClassicParser
    from pytest_dockapp.builds.output.plain import PlainParser
    from pytest_dockapp.builds.output.rawjson import RawJsonParser

    start = time.perf_counter()
    parser: ClassicParser | PlainParser | RawJsonParser
    labels = dict(labels or {})
    call = _Invocation(
        ctx, df_path, args, target, tag, labels, flags, dict(secrets or {}), mask, dict(resolved.spec.ssh)
    )
    if builder.name == "classic":
        parser = ClassicParser(df, target, on_event, hidden_steps=len(call.labels))
        _classic(client, call, parser)
        image_id = parser.image_id
    else:
        parser = (RawJsonParser if builder.rawjson else PlainParser)(df, target, on_event)
        with EngineWatch(client) as watch:
            image_id = _buildkit(builder, call, parser)
        if watch.failure is not None:
            raise watch.failure  # engine_phase names the engine and the phase
    parser.finish()
    steps = parser.result()
    log = parser.log
    if parser.error is not None:
        parser.error = mask(parser.error)
    record = BuildRecord(
        image_id=image_id,
        tag=tag,
        builder=builder.name,
        steps=steps,
        seconds=time.perf_counter() - start,
        context=ctx,
        dockerfile=df_path,
        build_args=redact(args),
        target=target,
        log=log,
        command=reproduce_command(builder, ctx, df_path, args, target, flags),
    )
    if parser.error is not None or not image_id:
        raise build_failure(client, df, record, parser.error or "the builder reported no image", args, builder)
    if not any(s.instruction is not None for s in steps) and _has_steps(parser.mapper, target, builder):
        raise BuildError(
            f"could not read what the {builder.describe()} builder did: no step of {df_path} was recognised "
            "in its output, so no cache hit or miss can be known",
            evidence=tail(log, 20),
            evidence_title="build output",
            hint="this engine's build output has a form pytest-dockapp does not know; please report it with "
            "this output, and use --dockapp-builder classic or buildkit meanwhile",
        )
    return record


def read_dockerfile(client: docker.DockerClient, path: Path, build_args: Mapping[str, str]) -> Dockerfile:
    """The Dockerfile at ``path`` with its ONBUILD triggers (see :func:`with_onbuild`)."""
    return with_onbuild(client, Dockerfile.read(path), build_args)


def with_onbuild(client: docker.DockerClient, df: Dockerfile, build_args: Mapping[str, str]) -> Dockerfile:
    """``df`` with the ONBUILD triggers its base images fire (read from the engine:
    ``Config.OnBuild``) inserted as steps of the stages that fire them."""
    import docker.errors

    triggers: dict[str, list[str]] = {}
    for _, image in df.base_images(build_args):
        try:
            triggers[image] = list((client.api.inspect_image(image).get("Config") or {}).get("OnBuild") or [])
        except docker.errors.APIError:
            continue  # not on the engine: the build pulls it or says it is missing
    return df.with_triggers(triggers, build_args)


@dataclass(frozen=True)
class _Invocation:
    """What one build hands its builder: the paths, the args, the tag and labels, the registry
    flags, the build secrets, and the mask every line of output goes through first."""

    ctx: Path
    df_path: Path
    args: dict[str, str]
    target: str | None
    tag: str
    labels: dict[str, str]
    flags: CacheFlags
    secrets: dict[str, str]
    mask: Callable[[str], str]
    ssh: dict[str, str]


def _needs_buildkit(spec: BuildSpec, builder: Builder) -> None:
    """Build secrets and ``build.ssh`` reach a build through BuildKit only."""
    if builder.name == "buildkit" or not (spec.secrets or spec.ssh):
        return
    what = [f"build secrets ({', '.join(sorted(spec.secrets))})"] if spec.secrets else []
    what += [f"build.ssh ({', '.join(sorted(spec.ssh))})"] if spec.ssh else []
    verb = "need" if spec.secrets else "needs"  # "build secrets ... need", "build.ssh ... needs"
    raise ConfigurationError(
        f"{' and '.join(what)} {verb} BuildKit, and the builder in use is classic",
        hint="run with --dockapp-builder buildkit (a docker CLI with buildx, or one older than 23.0)",
    )


def _ssh_args(ssh: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """The CLI's ``--ssh`` flags; the agent or key each names must be there, or the build could
    not reach it (the CLI's own message names neither the compose key nor what to do)."""
    out = []
    for sid, path in ssh.items():
        if not path and not env.get("SSH_AUTH_SOCK"):
            raise ConfigurationError(
                f"build.ssh {sid} needs an SSH agent, and SSH_AUTH_SOCK is not set",
                hint="start one and add the key the build needs (eval $(ssh-agent); ssh-add), or name the key: "
                f"ssh: [{sid}=~/.ssh/id_ed25519]",
            )
        if path and not os.path.exists(path):
            raise ConfigurationError(
                f"build.ssh {sid}: {path} does not exist", hint="name a private key file or an agent's socket"
            )
        out += ["--ssh", f"{sid}={path}" if path else sid]
    return out


def _has_steps(mapper: StepMapper, target: str | None, builder: Builder) -> bool:
    """Whether the builder prints at least one step for this Dockerfile (BuildKit prints
    nothing for ``FROM scratch`` and for instructions without a vertex, like CMD)."""
    df = mapper.df
    if builder.name == "classic":
        return bool(df.instructions)
    stages = df.stage_dependencies(df.target_stage(target))
    return any(
        not (i.keyword == "FROM" and df.stages[i.stage].base.lower() == "scratch")
        for st in stages
        for i in mapper.vertices(df.stages[st])
    )


def _classic(client: docker.DockerClient, call: _Invocation, parser: ClassicParser) -> None:
    import docker.errors

    from pytest_dockapp.builds.context import TarStream

    archive = TarStream(call.ctx, call.df_path)
    try:
        stream: Iterable[Mapping[str, Any]] = client.api.build(
            fileobj=archive.chunks(),
            custom_context=True,
            dockerfile=archive.dockerfile_name,
            buildargs=call.args,
            target=call.target,
            tag=call.tag,
            labels=call.labels,
            cache_from=list(call.flags.cache_from) or None,
            rm=True,
            forcerm=True,
            decode=True,
            timeout=BUILD_TIMEOUT,  # a step may print nothing for longer than an ordinary call may take
        )
        for chunk in stream:
            parser.feed(_masked(chunk, call.mask))
    except docker.errors.APIError as exc:
        parser.error = str(exc.explanation or exc)
    finally:
        archive.close()
    if archive.error is not None:
        parser.error = f"could not read the build context {call.ctx}: {archive.error}"


def _buildkit(builder: Builder, call: _Invocation, parser: PlainParser | RawJsonParser) -> str:
    assert builder.cli is not None
    sweep_build_dirs()  # a killed run's folder, its secret file included
    with tempfile.TemporaryDirectory(prefix=build_dir_prefix()) as tmp:
        iidfile = Path(tmp) / "iid"
        secret_args = []
        for sid, source in call.secrets.items():
            # The 20.10 CLI reads secrets from files only: an environment variable's value goes
            # to a file only we can read, in a folder removed with the build.
            path = secret_file(sid, source, Path(tmp))
            secret_args += ["--secret", f"id={sid},src={path}"]
        cmd = [builder.cli, "build", "--progress=" + ("rawjson" if builder.rawjson else "plain")]
        cmd += _cli_flags(call.df_path, call.args, call.target, call.flags)
        cmd += ["-t", call.tag, "--iidfile", str(iidfile)]
        for key, value in call.labels.items():
            cmd += ["--label", f"{key}={value}"]
        cmd += secret_args
        env = {**(builder.endpoint.cli_env() if builder.endpoint else os.environ), "DOCKER_BUILDKIT": "1"}
        cmd += _ssh_args(call.ssh, env)
        if builder.buildx:
            cmd.append("--load")
        cmd.append(str(call.ctx))
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace", bufsize=1
        )
        RUNNING_BUILDS.add(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parser.feed(call.mask(line))
        except BaseException:
            _stop(proc)  # interrupted (Ctrl-C, SIGTERM): do not wait for the build to finish
            raise
        finally:
            code = proc.wait()
            RUNNING_BUILDS.discard(proc)
        if code != 0 and parser.error is None:
            parser.error = f"docker build exited with code {code}"
        return iidfile.read_text().strip() if iidfile.exists() else ""


def _masked(chunk: Any, mask: Callable[[str], str]) -> Any:
    """``chunk`` of the engine's JSON build stream with every string in it masked."""
    if isinstance(chunk, str):
        return mask(chunk)
    if isinstance(chunk, Mapping):
        return {key: _masked(value, mask) for key, value in chunk.items()}
    if isinstance(chunk, list):
        return [_masked(value, mask) for value in chunk]
    return chunk


def reproduce_command(
    builder: Builder,
    ctx: Path,
    df_path: Path,
    args: Mapping[str, str],
    target: str | None,
    flags: CacheFlags | None = None,
) -> str:
    """The shell command that builds as the plugin does, with the same builder: what a CI stage
    runs before ``--dockapp-expect-cached`` (trust III, 14: a CLI that built classic while the
    plugin built with BuildKit missed every step). Secret-looking build args are passed by name."""
    import shlex

    buildkit = builder.name != "classic"
    cmd = [f"DOCKER_BUILDKIT={int(buildkit)}", builder.cli or "docker", "build"]
    cmd += ["--load"] if buildkit and builder.buildx else []
    cmd += [*_cli_flags(df_path, args, target, flags, secrets_by_name=True), str(ctx)]
    line = " ".join(c if c.startswith("DOCKER_BUILDKIT=") else shlex.quote(c) for c in cmd)
    if not buildkit and flags is not None:
        # The classic builder takes layers only from images on the engine.
        pulls = [f"{shlex.quote(builder.cli or 'docker')} pull {shlex.quote(ref)}" for ref in flags.cache_from]
        line = " && ".join([*pulls, line])
    return line


#: The build arg that makes BuildKit write its cache metadata into the image config, so that
#: the pushed image is a cache source (``--cache-from``) for another runner's BuildKit.
INLINE_CACHE_ARG = "BUILDKIT_INLINE_CACHE"


@dataclass(frozen=True)
class CacheFlags:
    """A build's registry cache: the images it may take layers from, and whether BuildKit writes
    its cache metadata into the image (``BUILDKIT_INLINE_CACHE=1``) for a push."""

    cache_from: tuple[str, ...] = ()
    inline: bool = False


def _cli_flags(
    df_path: Path,
    args: Mapping[str, str],
    target: str | None,
    flags: CacheFlags | None = None,
    *,
    secrets_by_name: bool = False,
) -> list[str]:
    """The Dockerfile, build args and target as the CLI takes them: one list for the BuildKit
    build the plugin runs and for the command the hint shows, so the two cannot drift apart."""
    cache = flags or CacheFlags()
    out = ["-f", str(df_path)]
    for key, value in args.items():
        out += ["--build-arg", key if secrets_by_name and looks_secret(key) else f"{key}={value}"]
    if target:
        out += ["--target", target]
    for ref in cache.cache_from:
        out += ["--cache-from", ref]
    return out + (["--build-arg", f"{INLINE_CACHE_ARG}=1"] if cache.inline else [])


class EngineWatch:
    """Pings the engine while a BuildKit CLI build runs: the CLI waits forever on a frozen engine
    (trust III: `still running ... (572s)`). On a failed ping the builds are stopped, and
    :attr:`failure` says why, within ``CALL_TIMEOUT + every`` seconds of the freeze."""

    def __init__(self, client: docker.DockerClient, every: float = ENGINE_WATCH_EVERY):
        self.client = client
        self.every = every
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dockapp-engine-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                ping(self.client)
            except Exception as exc:
                if is_engine_failure(exc) and not self._stop.is_set():
                    self.failure = exc
                    stop_running_builds()
                    return

    def __enter__(self) -> EngineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


#: The BuildKit CLI builds running now, in any thread: a build started in the background (at
#: collection) is stopped by :func:`stop_running_builds` when the session ends early.
RUNNING_BUILDS: set[subprocess.Popen[str]] = set()


#: Seconds a terminated CLI build gets before it is killed: on a frozen engine the CLI ignores
#: SIGTERM (measured: still running 10 s after it), since it waits to cancel the build there.
STOP_GRACE = 5.0


def stop_running_builds() -> None:
    """Terminate every BuildKit CLI build still running (the session is ending, or the engine
    stopped answering), and kill those still running :data:`STOP_GRACE` seconds later."""
    for proc in list(RUNNING_BUILDS):
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        proc.terminate()
    timer = threading.Timer(STOP_GRACE, _kill, args=(proc,))
    timer.daemon = True
    timer.start()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()


def known_secrets(build_args: Mapping[str, str], secrets: Mapping[str, str]) -> set[str]:
    """The values to mask for a build: secret-looking build args and the build secrets' values
    (a source that cannot be read is the build's error to report, not this one's)."""
    known = secret_values(build_args)
    for sid, source in secrets.items():
        with contextlib.suppress(ConfigurationError):
            known.add(secret_value(sid, source).strip())
    return known


def secret_value(sid: str, source: str) -> str:
    """The value of build secret ``sid``: the file ``source``, else the environment variable."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text()
    if source in os.environ:
        return os.environ[source]
    raise ConfigurationError(
        f"build secret {sid!r}: {source!r} is neither a file nor a set environment variable",
        hint="give a file path or the name of an environment variable, e.g. --dockapp-secret npm_token=NPM_TOKEN",
    )


def secret_file(sid: str, source: str, folder: Path) -> Path:
    """A file holding build secret ``sid`` (``source`` itself when it is a file)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    value = secret_value(sid, source)
    out = folder / f"secret-{hashlib.sha256(sid.encode()).hexdigest()[:12]}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return out
