"""The plugin's settings: one table that makes the options, the ini keys, the override
fixtures and the README's settings table, and one loop that resolves them.

Precedence, for every setting (:meth:`Settings.effective`): a marker or factory argument, then
the command line, then the environment, then a ``conftest.py`` fixture override, then the ini
file, then the default (a library constant); mappings merge key by key in that order.
Relative paths resolve from the rootdir (the ini file's folder), wherever they were given.
Bad values are usage errors that name the valid forms.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_dockapp.core.errors import ConfigurationError

STRICT_ENV = "DOCKAPP_STRICT"


def _lazy(module: str, name: str, **options: Any) -> Callable[[str], Any]:
    """The library's validator ``module.name``, imported when a value is given: the plugin loads
    without the library."""

    def parse(value: str) -> Any:
        import importlib

        return getattr(importlib.import_module(f"pytest_dockapp.{module}"), name)(value, **options)

    return parse


_timeout = _lazy("run.readiness.settings", "parse_timeout")
_health_path = _lazy("run.readiness.settings", "parse_health_path")
_builder = _lazy("engine.client", "parse_builder")
_ready = _lazy("run.readiness.settings", "parse_ready")
_ref = _lazy("builds.registry", "check_reference")
_push_ref = _lazy("builds.registry", "check_reference", tagged=True)
_age = _lazy("engine.cleanup", "parse_age")


def _port(value: str) -> str:
    _lazy("run.app", "parse_port")(value)
    return value


def _ip(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        raise ConfigurationError(
            f"{value!r} is not an IP address", hint="e.g. 127.0.0.1, 0.0.0.0 (every address) or ::1"
        ) from None
    return value.strip()


def _scope(value: str) -> str:
    text = value.strip().lower()
    if text not in ("session", "worker"):
        raise ConfigurationError(f"{value!r} is not a stack scope", hint="valid: session, worker")
    return text


def _budget(kind: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        from pytest_dockapp.budgets.check import Budget

        Budget.parse({kind: value})
        return value.strip()

    return parse


def _count(value: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigurationError(f"{value!r} is not a count", hint="0 (off), 1, 2, ...")
    return number


def _bool(value: str | bool) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{value!r} is not a boolean", hint="valid: true, false, 1, 0")


def _reuse(value: str | bool) -> bool | str:  # on, off, or force: on in CI too
    return "force" if str(value).strip().lower() == "force" else _bool(value)


def _pair(form: str, example: str) -> Callable[[str], tuple[str, str]]:
    def parse(value: str) -> tuple[str, str]:
        key, eq, val = value.partition("=")
        if not eq or not key.strip():
            raise ConfigurationError(f"{value!r} is not {form}", hint=f"e.g. {example}")
        return key.strip(), val

    return parse


_key_value = _pair("KEY=VALUE", "BASE_IMAGE=node:20")


def _secret(value: str) -> tuple[str, str]:
    sid, source = _pair("ID=SOURCE", "npm_token=NPM_TOKEN (an environment variable) or npm_token=~/.npmrc (a file)")(
        value
    )
    if not source.strip():
        raise ConfigurationError(f"{value!r} names no source", hint="e.g. npm_token=NPM_TOKEN")
    return sid, source.strip()


@dataclass(frozen=True)
class Setting:
    """One setting: where it can be given, how it is checked, what it defaults to."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] | None = None  # a library validator (ConfigurationError on bad values)
    kind: str = "value"  # value | flag (store_true) | pairs (repeatable KEY=VALUE, a dict) | list (repeatable)
    ini: bool = True  # also an ini key dockapp_<name>
    fixture: bool = False  # also a session fixture dockapp_<name> a conftest.py can override
    flag: str = ""  # the option, if not --dockapp-<name>
    metavar: str = ""
    shown_default: str = ""  # the default as the README says it, when not the value itself
    env: str = ""  # also an environment variable (a CI job's): over the ini file, under the command line

    @property
    def shown(self) -> str:
        """The default as ``--help`` and the README say it."""
        if self.shown_default:
            return self.shown_default
        if self.kind == "flag":
            return "off"
        if self.default is None:
            return "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    @property
    def option(self) -> str:
        return self.flag or "--dockapp-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "dockapp_" + self.name


def _defaults() -> dict[str, Any]:
    from pytest_dockapp.engine.cleanup import DEFAULT_REUSE_TTL as REUSE_TTL
    from pytest_dockapp.engine.cleanup import DEFAULT_SWEEP_AGE
    from pytest_dockapp.run.readiness.settings import DEFAULT_TIMEOUT, READY_CHOICES

    return {"timeout": DEFAULT_TIMEOUT, "sweep_age": DEFAULT_SWEEP_AGE, "ready": READY_CHOICES[0], "ttl": REUSE_TTL}


_D = _defaults()

SETTINGS: list[Setting] = [
    Setting("context", "build context folder", None, fixture=True, shown_default="rootdir"),
    Setting("dockerfile", "Dockerfile path, relative to the context", fixture=True, shown_default="Dockerfile"),
    Setting(
        "build_args",
        "build args, KEY=VALUE; the option is repeatable and applies on top of the ini lines",
        {},
        _key_value,
        kind="pairs",
        fixture=True,
        flag="--dockapp-build-arg",
        metavar="KEY=VALUE",
        shown_default="none",
    ),
    Setting("target", "target stage to build", fixture=True, shown_default="last stage"),
    Setting(
        "port",
        "main container port, e.g. 8080 or 8080/tcp",
        parse=_port,
        fixture=True,
        shown_default="the lowest EXPOSEd TCP port",
    ),
    Setting("health_path", "HTTP path that answers 2xx/3xx once the app is ready", parse=_health_path, fixture=True),
    Setting("timeout", "seconds to wait for the app to become ready", _D["timeout"], _timeout, fixture=True),
    Setting(
        "ready",
        "what ready means: auto (port, health path, HEALTHCHECK), listen (the port only), "
        "http (GET of the health path, / by default), healthcheck (port and HEALTHCHECK)",
        _D["ready"],
        _ready,
        fixture=True,
    ),
    Setting(
        "builder",
        "auto, classic or buildkit",
        "auto",
        _builder,
        shown_default="auto: BuildKit when any docker on PATH can drive it",
    ),
    Setting(
        "docker_cli",
        "docker CLI used for BuildKit builds",
        shown_default="the first docker on PATH that can drive BuildKit",
    ),
    Setting(
        "host_ip",
        "address published ports bind to on the engine's host (0.0.0.0: every address)",
        parse=_ip,
        shown_default="127.0.0.1 for a local engine, the engine's own address for a remote one",
    ),
    Setting(
        "connect_host",
        "host name or address to reach published ports at from here",
        shown_default="the DOCKER_HOST's (or context's) host; 127.0.0.1 for a local engine",
    ),
    Setting(
        "secrets",
        "BuildKit build secret ID=SOURCE, a file or an environment variable's name (repeatable)",
        {},
        _secret,
        kind="pairs",
        flag="--dockapp-secret",
        metavar="ID=SOURCE",
        shown_default="none",
    ),
    Setting(
        "compose",
        "compose files to run as the session's stack; several override in order, as docker compose -f a -f b",
        [],
        kind="list",
        fixture=True,
        metavar="FILE",
        shown_default="none: the Dockerfile alone",
    ),
    Setting(
        "service",
        "the compose service that is the app under test (dockapp)",
        fixture=True,
        shown_default="the one service with a build:",
    ),
    Setting(
        "compose_profiles",
        "compose profiles to enable (services without a profile always run)",
        [],
        kind="list",
        metavar="PROFILE",
        shown_default="none",
    ),
    Setting(
        "compose_ignore",
        "compose service keys to skip, as KEY (every service) or SERVICE.KEY: one a test run cannot honour, since "
        "an override file cannot remove a key",
        [],
        kind="list",
        metavar="KEY",
        shown_default="none",
    ),
    Setting(
        "compose_host_ports",
        "publish the fixed host ports a compose file names (parallel runs then collide)",
        False,
        _bool,
        kind="flag",
    ),
    Setting(
        "compose_scope",
        "under pytest-xdist: one stack for all workers (session), or one per worker, with its own network and "
        "volumes (worker: for tests that write to the database)",
        "session",
        _scope,
    ),
    Setting(
        "spares",
        "warm spares: at most N apps (or stacks) of a test's image and settings started ahead, so the next "
        "test's fresh app is ready; one at first, one more each time a test had to wait for its spare (0: off)",
        2,
        _count,
        metavar="N",
    ),
    Setting("budget_size", "fail the session image over this size, e.g. 80MB", parse=_budget("size"), metavar="SIZE"),
    Setting("budget_layers", "fail the session image with more layers than this", parse=_budget("layers"), metavar="N"),
    Setting(
        "budget_wasted",
        "fail the session image when later layers delete or overwrite more than this: 10MB or 5%",
        parse=_budget("wasted"),
        metavar="SIZE",
    ),
    Setting(
        "budget_ready", "fail when the session app takes longer than this to be ready, e.g. 2s", parse=_budget("ready")
    ),
    Setting(
        "budget_build",
        "fail when the session image's build (if one ran) takes longer: 60s",
        parse=_budget("build"),
    ),
    Setting(
        "cache_from",
        "registry images whose layers the build may use as cache (the CI registry's cache ref); one that does "
        "not exist yet is a cold build",
        [],
        _ref,
        kind="list",
        metavar="REF",
        shown_default="none",
        env="DOCKAPP_CACHE_FROM",
    ),
    Setting(
        "cache_to",
        "after a build, push the image with its inline cache and its inputs to this registry ref",
        parse=_push_ref,
        metavar="REF",
        env="DOCKAPP_CACHE_TO",
    ),
    Setting("strict", "no Docker engine is an error, not a skip", False, _bool, kind="flag", env=STRICT_ENV),
    Setting(
        "expect_cached",
        "fail the session build if any step misses the layer cache (CI test stages)",
        False,
        _bool,
        kind="flag",
    ),
    Setting(
        "sweep_age",
        "remove leftovers of other hosts' (or unknown) sessions older than this: off, 3600, 90m, 6h, 2d",
        _D["sweep_age"],
        _age,
        metavar="AGE",
        shown_default="6h",
    ),
    Setting(
        "rebuild", "build even when nothing the build reads changed since its last build", False, _bool, kind="flag"
    ),
    Setting(
        "image",
        "test this prebuilt image instead of building the Dockerfile (CI stages); with a compose file, the app's "
        "service runs it and the rest of the stack starts as the file says",
        parse=_ref,
        ini=False,
    ),
    Setting(
        "reuse",
        "leave the session's app or stack running for the next run, which attaches to it if nothing changed "
        "(off where a CI variable is set, unless force)",
        False,
        _reuse,
        kind="flag",
        env="DOCKAPP_REUSE",
    ),
    Setting("reuse_ttl", "remove a reusable app or stack unused this long", _D["ttl"], _age, shown_default="2h"),
    Setting("down", "remove this project's reusable apps and stacks, and run no test", False, kind="flag", ini=False),
    Setting(
        "cov",
        "measure the app's own code inside its containers (Node, Python); false turns off the automatic one",
        None,
        _bool,
        kind="flag",
        env="DOCKAPP_COV",
        shown_default="on with pytest-cov's --cov",
    ),
    Setting("cov_lcov", "also write the app's coverage as an LCOV file here", metavar="PATH"),
    Setting("keep", "leave the containers of failing tests running (named *-kept)", False, kind="flag", ini=False),
    Setting("remove_images", "remove the images this session built when it ends", False, kind="flag", ini=False),
    Setting(
        "sweep_kept", "the sweep also removes other sessions' --dockapp-keep containers", False, kind="flag", ini=False
    ),
    Setting("lint", "also check Dockerfiles for cache-hostile layer order", False, kind="flag", ini=False),
    Setting(
        "lint_only",
        "only check Dockerfiles: every other test is deselected, nothing is built (no engine needed)",
        False,
        kind="flag",
        ini=False,
    ),
]
BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """The resolved settings of a session: one read-only attribute per row of :data:`SETTINGS`
    (the table is the only list of names and defaults), and what the command line or the
    environment gave, which wins over a ``conftest.py`` fixture (:meth:`effective`)."""

    __slots__ = ("_values", "from_cli")

    def __init__(self, values: Mapping[str, Any], from_cli: Mapping[str, Any] | None = None):
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise TypeError(f"not settings: {', '.join(unknown)}")
        defaults = {s.name: copy.copy(s.default) for s in SETTINGS}  # a fresh {} or [] per session
        object.__setattr__(self, "_values", {**defaults, **values})
        #: What the command line (else the environment) gave, by setting.
        object.__setattr__(self, "from_cli", dict(from_cli or {}))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{name!r} is not a setting of the table in options.py") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("settings are resolved once, at configure, and then only read")

    @staticmethod
    def names() -> list[str]:
        return [s.name for s in SETTINGS]

    def effective(self, name: str, *, call: Any = None, fixture: Any = None) -> Any:
        """The one rule for every setting: a call's argument (a factory, a marker, dockapp_fresh),
        then the command line, then the environment, then a conftest.py fixture (whose default is
        the ini file's value, else the default). Mappings merge key by key in that order."""
        given = self.from_cli.get(name)
        if BY_NAME[name].kind == "pairs":
            return {**(fixture or {}), **(given or {}), **(call or {})}
        if call is not None:
            return call
        return given if given is not None else fixture


def add_options(parser: pytest.Parser) -> None:
    """The option group and the ini keys, from the table."""
    group = parser.getgroup("dockapp", "build, run and test a Dockerfile's service (pytest-dockapp)")
    for s in SETTINGS:
        text = s.help.replace("%", "%%")  # argparse formats help texts with %
        ini = (f" [ini: {s.dest}]" if s.ini else "") + (f" [env: {s.env}]" if s.env else "")
        default = f" (default: {s.shown})" if s.kind != "flag" else ""
        if s.kind == "flag":
            group.addoption(s.option, dest=s.dest, action="store_true", default=None, help=text + ini)
        elif s.kind in ("pairs", "list"):
            group.addoption(
                s.option, dest=s.dest, action="append", default=[], metavar=s.metavar, help=text + default + ini
            )
        else:
            group.addoption(
                s.option, dest=s.dest, default=None, metavar=s.metavar or s.name.upper(), help=text + default + ini
            )
        if s.ini:
            # Flags are read as strings and checked by their own parser: pytest's "bool" type
            # rejects `maybe` without naming the key.
            kind = {"pairs": "linelist", "list": "args"}.get(s.kind, "string")
            parser.addini(s.dest, s.help, type=kind, default=None if kind == "string" else [])  # type: ignore[arg-type]


def _parsed(s: Setting, value: Any, where: str) -> Any:
    try:
        if s.kind == "pairs":
            assert s.parse is not None
            return dict(s.parse(v) for v in value)
        if s.kind == "list":
            return [s.parse(str(v)) if s.parse is not None else str(v) for v in value]
        return s.parse(value) if s.parse is not None and isinstance(value, str) else value
    except ConfigurationError as exc:
        raise pytest.UsageError(
            f"dockapp {s.name.replace('_', ' ')} ({where}): {exc.what}" + (f"; {exc.hint}" if exc.hint else "")
        ) from None


def resolve(config: pytest.Config) -> Settings:
    """The session's settings, in one loop over the table."""
    values: dict[str, Any] = {}
    from_cli: dict[str, Any] = {}
    for s in SETTINGS:
        value: Any
        cli = config.getoption(s.dest)
        ini = config.getini(s.dest) if s.ini else None
        where = f"ini {s.dest}"
        from_env = bool(s.env and os.environ.get(s.env, "").strip())
        if from_env:
            # The environment (a CI job's) sits between the command line and the ini file, and
            # over a conftest.py fixture, as the command line does.
            raw = os.environ[s.env].strip()
            ini, where = (raw.replace(",", " ").split() if s.kind == "list" else raw), s.env
        if s.kind == "pairs":
            # ini lines first, the command line on top
            value = {**_parsed(s, ini or [], where), **_parsed(s, cli or [], s.option)}
            if cli:
                from_cli[s.name] = value
        elif s.kind == "list":
            value = _parsed(s, cli, s.option) if cli else _parsed(s, ini or [], where)
            if cli or from_env:
                from_cli[s.name] = value
        elif cli not in (None, ""):
            value = from_cli[s.name] = _parsed(s, cli, s.option)
        elif ini not in (None, ""):
            value = _parsed(s, ini, where)
            if from_env:
                from_cli[s.name] = value
        else:
            value = s.default
        values[s.name] = value
    _check_labels()
    base = config.rootpath
    values["context"] = (base / values["context"]).resolve() if values["context"] else base
    return Settings(values, from_cli)


def _check_labels() -> None:
    """``DOCKAPP_LABELS`` is read where the engine is connected: a bad entry is a usage error now,
    never a "no engine" skip later."""
    from pytest_dockapp.engine.cleanup import extra_labels

    try:
        extra_labels()
    except ConfigurationError as exc:
        raise pytest.UsageError(f"dockapp: {exc.what}; {exc.hint}") from None


def check_ini_keys(config: pytest.Config, strict: bool) -> None:
    """A misspelled ``dockapp_*`` ini key would leave its setting at the default, with only pytest's
    generic warning: name the key it most likely means, and
    make it an error under ``--dockapp-strict``."""
    import difflib

    # pytest's own check (a private method since pytest 6, still there in 9); config.inicfg, its
    # older source, is deprecated in pytest 9.
    unknown = getattr(config, "_get_unknown_ini_keys", None)
    keys: set[str] = unknown() if unknown else set(config.inicfg) - set(config._parser._inidict)
    ours = [s.dest for s in SETTINGS if s.ini]
    for key in sorted(keys):
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.75)
        if not close and not key.startswith("dockapp"):
            continue
        guess = f"did you mean {close[0]}?" if close else "the dockapp keys are listed by pytest --help"
        message = f"unknown ini key {key!r}: {guess} (the setting keeps its default)"
        if strict:
            raise pytest.UsageError(f"dockapp: {message}")
        warn_at_ini(config, message, key)


def warn_at_ini(config: pytest.Config, message: str, key: str, *, from_cli: bool = False) -> None:
    """A :class:`DockappWarning` about ini ``key``, reported at its line in the user's ini file
    (pytest's ``issue_config_time_warning`` would name this module), or at the command line."""
    import re
    import warnings

    from pytest_dockapp.core.errors import DockappWarning

    filename, line = "command line", 1
    path = config.inipath
    if not from_cli and path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        found = [n for n, text in enumerate(lines, 1) if re.match(rf"\s*{re.escape(key)}\s*[=:]", text)]
        filename, line = str(path), (found[0] if found else 1)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", DockappWarning)
        warnings.warn_explicit(DockappWarning(message), DockappWarning, filename, line)
    for record in records:
        config.hook.pytest_warning_recorded.call_historic(
            kwargs={"warning_message": record, "when": "config", "nodeid": "", "location": (filename, line, key)}
        )


def markdown_table() -> str:
    """The README's settings table."""
    rows = [
        "| setting | command line | ini key | conftest fixture | environment | default |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        option = f"`{s.option} {s.metavar or s.name.upper()}`" if s.kind != "flag" else f"`{s.option}`"
        if s.kind in ("pairs", "list"):
            option += " (repeatable)"
        default = s.shown
        rows.append(
            f"| {s.help} | {option} | {f'`{s.dest}`' if s.ini else ''} | "
            f"{f'`{s.dest}`' if s.fixture else ''} | {f'`{s.env}`' if s.env else ''} | {default} |"
        )
    return "\n".join(rows)
