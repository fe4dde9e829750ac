"""What one container start costs the machine, not only the wall clock (issue 25): the bound
that warm spares cannot pass, because spares move a start off the test's path but do not make
it cheaper.

    python bench/engine_cpu.py --runs 30

Each row: ``runs`` times, through the docker SDK, what a fresh app costs the engine (create and
start, the published port answering, ``remove(force=True)``), with the machine's busy CPU time
read from ``/proc/stat`` around the loop, less this process's own. Variants: a published port
(what the plugin runs), no published port (no ``docker-proxy``, no NAT rules), no network at all,
and a stack's network (create and remove). Run it on a quiet machine: CPU time of anything else
running counts too.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from typing import Any

import docker
from scaling import DOCKERFILE

IMAGE = "dockapp-bench/scaling:1"


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def app(client: docker.DockerClient, publish: bool, network: bool) -> None:
    kwargs: dict[str, Any] = {"ports": {"80/tcp": ("127.0.0.1", None)}} if publish else {}
    if not network:
        kwargs["network_mode"] = "none"
    container = client.containers.run(IMAGE, detach=True, **kwargs)
    if publish:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.005)
    container.remove(force=True)


def network(client: docker.DockerClient) -> None:
    client.networks.create(f"dockapp-bench-{os.getpid()}", driver="bridge").remove()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, "-"], input=DOCKERFILE, text=True,
                   check=True, capture_output=True)  # fmt: skip
    client = docker.from_env()
    cores = os.cpu_count() or 1
    variants = {
        "app: start, port answers, remove (what the plugin runs)": lambda: app(client, True, True),
        "app without a published port": lambda: app(client, False, True),
        "app without a network (network_mode none)": lambda: app(client, False, False),
        "a stack's network: create and remove": lambda: network(client),
    }
    print(f"| what ({args.runs} times each, {cores} cores) | wall ms each | machine CPU ms each "
          "| of which this client | starts per second the CPU allows |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label, once in variants.items():
        once()  # warm-up
        wall, cpu, own = time.perf_counter(), busy_seconds(), sum(os.times()[:2])
        for _ in range(args.runs):
            once()
        wall, cpu, own = time.perf_counter() - wall, busy_seconds() - cpu, sum(os.times()[:2]) - own
        per = cpu / args.runs
        print(f"| {label} | {wall / args.runs * 1000:.0f} | {per * 1000:.0f} | {own / args.runs * 1000:.0f} "
              f"| {cores / per:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
