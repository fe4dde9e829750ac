"""Working side by side with testcontainers on an engine that has no registry.

testcontainers starts its Ryuk reaper from an image it pulls, and on machines
with ``/.dockerenv`` it guesses the gateway IP as the host of published ports.
Air-gapped CI has neither a pullable Ryuk nor a reachable gateway guess, so
before we hand out a shared network we settle both, unless the user already did.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pytest_dockapp.engine import cleanup

if TYPE_CHECKING:
    import docker


def settle_testcontainers(client: docker.DockerClient) -> None:
    """Disable Ryuk when its image is not on the engine, and connect to published ports through
    the Docker host (127.0.0.1 for a local socket) instead of a guessed gateway.

    Settings the user made (``TESTCONTAINERS_RYUK_DISABLED``, ``TESTCONTAINERS_CONNECTION_MODE``,
    ``TESTCONTAINERS_HOST_OVERRIDE``) win.
    """
    import docker.errors
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as config

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ and not config.ryuk_disabled:
        try:
            client.api.inspect_image(config.ryuk_image)
        except docker.errors.ImageNotFound:
            config.ryuk_disabled = True  # a pull would fail (or hang) here; our labels and sweep clean up
    overridden = os.environ.get("TESTCONTAINERS_CONNECTION_MODE") or config.tc_host_override
    if not overridden and config.connection_mode_override is None:
        config.connection_mode_override = ConnectionMode.docker_host


def create_network(client: docker.DockerClient, owner: cleanup.Owner) -> Any:
    """A testcontainers ``Network`` carrying our labels, created and ready to join."""
    from testcontainers.core.network import Network

    settle_testcontainers(client)
    network = Network(docker_network_kw={"labels": owner.labels("network")})
    return network.create()
