"""The one exception tree of pytest-dockapp.

Every error says what happened, shows the evidence (build output, container log
or health log tail) and says what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BaseImageUnavailableError",
    "BudgetExceededError",
    "BuildError",
    "CacheMarkerUsageError",
    "CacheRegressionError",
    "ComposeError",
    "ConfigurationError",
    "ContainerError",
    "ContainerExitedError",
    "ContainerGoneError",
    "DockappError",
    "DockappWarning",
    "DockerfileError",
    "EngineUnavailableError",
    "PortError",
    "ReadinessTimeoutError",
    "RegistryError",
    "UnhealthyError",
]


def tail(text: str | Iterable[str], lines: int = 20) -> str:
    """Last ``lines`` lines of ``text`` (a string or an iterable of lines)."""
    items = text.splitlines() if isinstance(text, str) else [s.rstrip("\n") for s in text]
    shown = items[-lines:]
    prefix = [f"... ({len(items) - lines} earlier lines)"] if len(items) > lines else []
    return "\n".join(prefix + shown)


#: Caps for log text shown in reports: one line, and a whole section.
MAX_LINE = 2000
MAX_TEXT = 64 * 1024


def cap(text: str, max_line: int = MAX_LINE, max_text: int = MAX_TEXT) -> str:
    """``text`` with each line cut at ``max_line`` characters and the whole kept to the last
    ``max_text`` characters, saying so where it cut (a 100 MB log line stays readable)."""
    lines = []
    for line in text.splitlines():
        if len(line) > max_line:
            line = f"{line[:max_line]}... [{len(line) - max_line} more characters cut by pytest-dockapp]"
        lines.append(line)
    out = "\n".join(lines)
    if len(out) > max_text:
        out = f"[... {len(out) - max_text} earlier characters cut by pytest-dockapp]\n" + out[-max_text:]
    return out


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else line for line in text.splitlines())


class DockappError(Exception):
    """Base of every pytest-dockapp error.

    ``what`` says what happened, ``evidence`` holds log or output lines, and
    ``hint`` says what to do next.
    """

    def __init__(self, what: str, *, evidence: str = "", evidence_title: str = "", hint: str = ""):
        self.what = what
        self.evidence = evidence
        self.evidence_title = evidence_title
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.what]
        if self.evidence.strip():
            parts.append(f"{self.evidence_title or 'output'}:\n{_indent(self.evidence)}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class EngineUnavailableError(DockappError):
    """No Docker engine answered."""


class ConfigurationError(DockappError):
    """A setting, option or marker argument is wrong (missing context, bad port, ...)."""


class DockerfileError(ConfigurationError):
    """The Dockerfile cannot be read or parsed."""


class ComposeError(ConfigurationError):
    """A compose file cannot be read, or asks for something the plugin does not support."""


class BuildError(DockappError):
    """The image build failed."""


class BaseImageUnavailableError(BuildError):
    """A FROM image is not on the engine and cannot be pulled."""


class RegistryError(DockappError):
    """A registry could not be reached, refused the credentials, or has no such image."""


class PortError(ConfigurationError):
    """No usable port: nothing EXPOSEd, an unknown main port, or a host port in use."""


class ContainerError(DockappError):
    """The container could not start, exited, or went away."""


class ContainerExitedError(ContainerError):
    """The container stopped while we waited for it to become ready."""


class ContainerGoneError(ContainerError):
    """The container was removed or killed from outside the test session."""


class UnhealthyError(ContainerError):
    """The image's HEALTHCHECK reported ``unhealthy``."""


class ReadinessTimeoutError(ContainerError):
    """The service did not become ready within the timeout."""


class CacheRegressionError(DockappError):
    """A rebuild missed the layer cache where it should have hit."""


class BudgetExceededError(DockappError):
    """An image or its app is over a budget (size, layers, wasted bytes, time to ready, build time)."""


class CacheMarkerUsageError(ConfigurationError):
    """The ``dockapp_cache`` marker was given arguments that cannot be checked."""


class DockappWarning(UserWarning):
    """Something works, but is risky or will surprise: a secret in a build arg, say."""


# Shown as users import them (`pytest_dockapp.PortError`), not by the module that defines them.
for _name in __all__:
    globals()[_name].__module__ = "pytest_dockapp"
