"""One test's wall time on each engine the plugin can reach, with the raw CLI's floor on each.

    python bench/engines.py --runs 7

Engines (those that answer are measured, the others are listed as skipped):
- local: this machine's engine (unix socket);
- tcp: the second engine of ``.ci/remote-engine start`` (tcp://10.250.0.2:2375);
- ssh: the same engine over ``.ci/remote-engine ssh`` (paramiko);
- podman: ``podman system service`` at unix:///run/dockapp-podman.sock (CONTAINERS_CONF as in
  the README's podman notes).

Each run is a whole ``python -m pytest`` process on a one-test project (busybox httpd, one
GET), after a warm-up run; variants interleave run by run, as in ``bench/run.py``. The floor
runs the same test with the raw docker CLI (``docker run -d -p``, a connect loop, ``docker rm
-f``) against the same engine, so the ratio is per engine. Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCKERFILE = """FROM dockapp-test/busybox:1
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

TEST = """
def test_home(dockapp):
    assert dockapp.get("/").text == "hello\\n"
"""

FLOOR_CONFTEST = """
import os, socket, subprocess, time, urllib.request
import pytest

@pytest.fixture(scope="session")
def dockapp():
    host = os.environ.get("FLOOR_DIAL", "127.0.0.1")
    publish = os.environ.get("FLOOR_PUBLISH", "127.0.0.1")
    cid = subprocess.check_output(
        ["docker", "run", "-d", "-p", f"{publish}::80", os.environ["FLOOR_IMAGE"]], text=True
    ).strip()
    port = subprocess.check_output(["docker", "port", cid, "80/tcp"], text=True).split(":")[-1].strip()

    class App:
        def get(self, path):
            class R: pass
            r = R()
            r.text = urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5).read().decode()
            return r

    for _ in range(1000):
        try:
            urllib.request.urlopen(f"http://{host}:{port}/", timeout=1).read()
            break
        except OSError:
            time.sleep(0.01)
    yield App()
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
"""


def engines() -> dict[str, dict[str, str]]:
    podman_conf = "/etc/dockapp-podman/containers.conf"
    return {
        "local": {},
        "tcp": {"DOCKER_HOST": "tcp://10.250.0.2:2375"},
        "ssh": {"DOCKER_HOST": "ssh://root@10.250.0.2"},
        "podman": {"DOCKER_HOST": "unix:///run/dockapp-podman.sock", "CONTAINERS_CONF": podman_conf},
    }


def answers(env: dict[str, str]) -> bool:
    probe = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=20,
    )
    return probe.returncode == 0


def project(root: Path, name: str, conftest: str = "") -> Path:
    path = root / name
    path.mkdir()
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "test_one.py").write_text(TEST)
    if conftest:
        (path / "conftest.py").write_text(conftest)
        (path / "pytest.ini").write_text("[pytest]\naddopts = -p no:dockapp\n")
    return path


def run(path: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{proc.stdout[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", default="", help="comma-separated engines")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dockapp-engines-"))
    rows = []
    try:
        for name, env in engines().items():
            if args.only and name not in args.only.split(","):
                continue
            if not answers(env):
                rows.append(f"| {name} | not running here | | | |")
                continue
            # The floor needs the image on that engine: build it once with the CLI.
            image = f"dockapp-bench/engines:{name}"
            subprocess.run(
                ["docker", "build", "-q", "-t", image, "-"],
                input=DOCKERFILE,
                text=True,
                env={**os.environ, **env},
                check=True,
                capture_output=True,
            )
            dial = env.get("DOCKER_HOST", "").split("//")[-1].split(":")[0].split("@")[-1]
            remote = name in ("tcp", "ssh")
            floor_env = {
                **env,
                "FLOOR_IMAGE": image,
                "FLOOR_DIAL": dial if remote else "127.0.0.1",
                "FLOOR_PUBLISH": dial if remote else "127.0.0.1",
            }
            plugin = project(root, f"{name}-dockapp")
            floor = project(root, f"{name}-floor", FLOOR_CONFTEST)
            run(plugin, env), run(floor, floor_env)  # warm-up: build and layer cache
            walls: dict[str, list[float]] = {"dockapp": [], "floor": []}
            for _ in range(args.runs):
                walls["floor"].append(run(floor, floor_env))
                walls["dockapp"].append(run(plugin, env))
            med = {k: statistics.median(v) for k, v in walls.items()}
            rows.append(
                f"| {name} | {med['floor']:.3f}s ({min(walls['floor']):.3f}–{max(walls['floor']):.3f}) | "
                f"{med['dockapp']:.3f}s ({min(walls['dockapp']):.3f}–{max(walls['dockapp']):.3f}) | "
                f"{med['dockapp'] / med['floor']:.2f}× | {args.runs} |"
            )
            subprocess.run(["docker", "rmi", "-f", image], env={**os.environ, **env}, capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| engine | floor (raw CLI) | dockapp | vs floor | runs |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
