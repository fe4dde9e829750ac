"""testcontainers and pytest-dockapp on one network, with no Ryuk image and no registry."""

from __future__ import annotations

import pytest

from .helpers import DIAL_HOST, App


def test_app_and_testcontainers_container_share_a_network(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        f"""
        import requests
        from testcontainers.core.container import DockerContainer

        def test_shared(dockapp_factory, dockapp_network):
            backend = (
                DockerContainer("{app.busybox}")
                .with_command(["sh", "-c", "mkdir -p /srv && echo from-backend > /srv/index.html && "
                               "exec httpd -f -p 8080 -h /srv"])
                .with_network(dockapp_network)
                .with_network_aliases("backend")
                .with_exposed_ports(8080)
            )
            with backend:
                web = dockapp_factory(network=dockapp_network, aliases=["web"])
                code, out = web.exec(["wget", "-qO-", "http://backend:8080/"])
                assert (code, out) == (0, "from-backend\\n")
                # testcontainers' own host/port, without the gateway guess /.dockerenv would cause
                host = backend.get_container_host_ip()
                assert host in ("localhost", "{DIAL_HOST}")
                for _ in range(100):
                    try:
                        reply = requests.get(f"http://{{host}}:{{backend.get_exposed_port(8080)}}/", timeout=2)
                        break
                    except requests.ConnectionError:
                        import time; time.sleep(0.05)
                assert reply.text == "from-backend\\n"
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
