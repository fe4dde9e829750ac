"""What ready means, and the timeout: the values the settings and the factory check."""

from __future__ import annotations

from pytest_dockapp.core.errors import ConfigurationError

#: Seconds to wait for an app to become ready, unless told otherwise.
DEFAULT_TIMEOUT = 60.0


#: What "ready" means (``dockapp_ready``): see :class:`ReadyWait`.
READY_CHOICES = ("auto", "listen", "http", "healthcheck")


def parse_ready(value: str) -> str:
    """One of :data:`READY_CHOICES`."""
    if value not in READY_CHOICES:
        raise ConfigurationError(f"{value!r} is unknown", hint="valid: " + ", ".join(READY_CHOICES))
    return value


def parse_timeout(value: str | float) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigurationError(f"{value!r} is not a positive number of seconds", hint="e.g. 60 or 2.5")
    return seconds


def parse_health_path(value: str) -> str:
    """An absolute HTTP path."""
    if not value.startswith("/"):
        raise ConfigurationError(f"{value!r} must start with '/'", hint="e.g. /health")
    return value
