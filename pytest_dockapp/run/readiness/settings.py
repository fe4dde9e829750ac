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


#: The timeouts a wait accepts: below a tenth of a second no probe answers in time, and past a day
#: the engine's HTTP client cannot hold a read timeout (``inf`` overflows it).
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 86400.0


def parse_timeout(value: str | float) -> float:
    """A number of seconds from :data:`MIN_TIMEOUT` to :data:`MAX_TIMEOUT`."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:  # also false for nan
        raise ConfigurationError(
            f"{value!r} is not a timeout from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds (a day)",
            hint="e.g. 60 or 2.5",
        )
    return seconds


def parse_health_path(value: str) -> str:
    """An absolute HTTP path."""
    if not value.startswith("/"):
        raise ConfigurationError(f"{value!r} must start with '/'", hint="e.g. /health")
    return value
