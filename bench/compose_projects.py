"""Two stacks shaped like real projects' compose files (the shapes of ``tests/compose_corpus``),
run offline on the local bases: stack start to ready, then removal, as one pytest session with
one test, against ``docker-compose up -d`` + a readiness loop + ``down -v`` on the same files.

    python bench/compose_projects.py --runs 5

- ``secrets``: the awesome-compose database shape: an app built from a Dockerfile, PostgreSQL
  with its password as a file secret (``POSTGRES_PASSWORD_FILE=/run/secrets/db-password``), a
  health check, and the app waiting for it to be healthy;
- ``networks``: the mastodon shape: PostgreSQL (``shm_size``) and Redis on an internal
  network, the app on that and a second network, ``restart`` and ``develop`` keys that a test
  run accepts without applying.

Whole processes, variants interleaved run by run, medians (min-max), ratios to compose in the
same run. Needs compose v1 (``apt-get install docker-compose``) and the local bases
(``.ci/make-bases busybox redis postgres``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from services import DOCKERFILE, compose, session, table  # V1's app, timing, readiness loop and table

PROJECTS = {
    "secrets": """services:
  web:
    build: .
    ports: ["80"]
    secrets: [db-password]
    depends_on:
      db: {condition: service_healthy}
  db:
    image: dockapp-test/postgres:bookworm
    restart: always
    secrets: [db-password]
    environment: [POSTGRES_PASSWORD_FILE=/run/secrets/db-password]
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}
    volumes: [db-data:/var/lib/postgresql/data]
volumes:
  db-data: {}
secrets:
  db-password: {file: password.txt}
""",
    "networks": """services:
  db:
    image: dockapp-test/postgres:bookworm
    restart: always
    shm_size: 256mb
    networks: [internal_network]
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}
  redis:
    image: dockapp-test/redis:bookworm
    restart: always
    networks: [internal_network]
    healthcheck: {test: [CMD, redis-cli, ping], interval: 1s, retries: 30}
  web:
    build: .
    restart: always
    ports: ["80"]
    networks: [external_network, internal_network]
    depends_on:
      db: {condition: service_healthy}
      redis: {condition: service_healthy}
networks:
  external_network:
  internal_network:
    internal: true
""",
}
TEST = "def test_first(dockapp):\n    assert dockapp.get('/').status_code == 200\n"


def write(folder: Path, compose_file: str, ours: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "compose.yaml").write_text(compose_file)
    (folder / "password.txt").write_text("bench-password\n")
    if ours:
        (folder / "pytest.ini").write_text("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
        (folder / "test_stack.py").write_text(TEST)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, compose_file in PROJECTS.items():
            ours = write(root / name / "dockapp", compose_file, ours=True)
            plain = write(root / name / "compose", compose_file, ours=False)
            times: dict[str, list[float]] = {"compose": [], "dockapp": []}
            for n in range(args.runs):
                times["dockapp"].append(session(sys.executable, ours)[0])
                times["compose"].append(compose(plain, n))
            print(f"\n{name}")
            table(times, "compose")


if __name__ == "__main__":
    main()
