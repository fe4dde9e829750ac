"""CI across runners (issue 23): a cold runner with and without the registry cache, against a
warm local rebuild, for a 9-step Node app on both builders; and what pushes and pulls add.

    .ci/registry start
    .ci/remote-engine start dockapp-test/node:bookworm && .ci/registry forward
    python bench/registry_cache.py --runs 3

Runner A is this engine, runner B the second one (``.ci/remote-engine``). Each run and builder
uses fresh ``RUN_ID`` values, so that no earlier run's layers match on either engine:

- push: A builds id1 and pushes it (``dockapp_cache_to``): the push's share of the session;
- cold: B builds id3, which it never saw, with no cache: every step runs;
- cold + cache: B builds id1 with ``dockapp_cache_from``: steps cached, how many came from the
  registry, and the pulls' share;
- CLI cold + cache: the raw CLI on B for id2 (pushed by A the same way): ``docker pull`` then
  ``DOCKER_BUILDKIT=0 docker build --cache-from`` (classic), ``DOCKER_BUILDKIT=1 docker build
  --cache-from`` (BuildKit);
- warm: A builds id1 again, with the same settings as B (``dockapp_cache_from``): its own
  cache is warm (a developer's rebuild). With other labels the classic builder's last step,
  the labels, would miss (measured: 9.5 s, a container commit on this 400 MB base).
  (Not on B: after a build from ``--cache-from``, the classic builder's rebuild without it
  missed from the first RUN on, measured: the images it made from the cache image are not
  found by its local cache.)

Each variant is timed around the library call (``AppManager.image``: the cache check, the pulls,
the build, the push), builds only, no container. Medians (min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from pytest_dockapp import AppManager, BuildPolicy, BuildSpec, RegistryCache, SessionOptions
from pytest_dockapp.engine.endpoint import resolve_endpoint

# Nine steps after FROM; the two RUN steps that stand for a dependency install and a build
# write 30 MB and 2 MB of incompressible bytes and take 2 s and 1 s, as real ones would.
DOCKERFILE = """FROM dockapp-test/node:bookworm
ARG RUN_ID
ENV NODE_ENV=production
WORKDIR /app
COPY package.json ./
RUN echo "$RUN_ID" > build-id && sleep 2 \\
 && node -e "require('fs').writeFileSync('deps.bin', require('crypto').randomBytes(30e6))"
COPY src/ ./src/
RUN sleep 1 && node -e "require('fs').writeFileSync('dist.bin', require('crypto').randomBytes(2e6))"
EXPOSE 3000
CMD ["node", "src/server.js"]
"""
PACKAGE = '{"name": "bench-app", "version": "1.0.0", "private": true}\n'
SERVER = "require('http').createServer((q, s) => s.end('ok')).listen(3000);\n"


def build(host: str, folder: Path, builder: str, run_id: str, registry: RegistryCache | None) -> dict[str, float]:
    env = {"DOCKER_HOST": host} if host else {}
    options = SessionOptions(builder, sweep_age=None, builds=BuildPolicy(False, registry or RegistryCache()))
    apps = AppManager.connect(options, endpoint=resolve_endpoint(env))
    began = time.perf_counter()
    try:
        image = apps.image(BuildSpec(folder, build_args={"RUN_ID": run_id}))
    finally:
        apps.close()
    seconds = time.perf_counter() - began
    record = image.record
    assert record is not None
    BUILT.append((host, image.id))
    return {
        "seconds": seconds,
        "registry": record.registry_seconds,
        "hits": len(record.hits),
        "steps": len(record.cacheable_steps),
        "from_registry": record.registry_hits,
    }


#: (engine, image ID) of every image built by a run: removed when the run ends, so that the warm
#: rebuild still finds its cache (the classic builder's cache is the built images' parents).
BUILT: list[tuple[str, str]] = []


def remove_built() -> None:
    import docker

    for host, image_id in BUILT:
        client = docker.DockerClient(base_url=host) if host else docker.from_env()
        with contextlib.suppress(docker.errors.APIError):  # removed by an earlier entry: the same image
            client.api.remove_image(image_id, force=True)
    BUILT.clear()


def cli_build(host: str, folder: Path, builder: str, run_id: str, ref: str) -> float:
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"}
    tag = f"bench-registry-cli:{run_id}"
    began = time.perf_counter()
    if builder == "classic":
        subprocess.run(["docker", "pull", "-q", ref], env=env, check=True, capture_output=True)
    cli = "/usr/bin/docker" if builder == "buildkit" else "docker"
    cmd = [cli, "build", "-q", "--build-arg", f"RUN_ID={run_id}", "--cache-from", ref, "-t", tag, str(folder)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    subprocess.run(["docker", "rmi", "-f", tag, ref], env=env, capture_output=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--registry", default=os.environ.get("DOCKAPP_TEST_REGISTRY", "127.0.0.1:5000"))
    parser.add_argument("--remote", default=os.environ.get("DOCKAPP_TEST_REMOTE_HOST", "tcp://10.250.0.2:2375"))
    parser.add_argument("--builders", default="classic,buildkit")
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "package.json").write_text(PACKAGE)
    (folder / "src").mkdir()
    (folder / "src" / "server.js").write_text(SERVER)
    repo = f"{opts.registry}/bench/{uuid.uuid4().hex[:8]}/app"
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for run in range(opts.runs):
            for builder in opts.builders.split(","):
                ids = [uuid.uuid4().hex for _ in range(3)]
                ref1, ref2 = f"{repo}:{ids[0][:12]}", f"{repo}:{ids[1][:12]}"
                push = build("", folder, builder, ids[0], RegistryCache(cache_to=ref1))
                build("", folder, builder, ids[1], RegistryCache(cache_to=ref2))
                cold = build(opts.remote, folder, builder, ids[2], None)
                cached = build(opts.remote, folder, builder, ids[0], RegistryCache(cache_from=(ref1,)))
                cli = {"seconds": cli_build(opts.remote, folder, builder, ids[1], ref2)}
                warm = build("", folder, builder, ids[0], RegistryCache(cache_from=(ref1,)))
                for name, row in [("A: build + push", push), ("B cold", cold), ("B cold + cache", cached)]:
                    rows.setdefault((builder, name), []).append(row)
                rows.setdefault((builder, "B CLI cold + cache"), []).append(cli)
                rows.setdefault((builder, "A warm local rebuild"), []).append(warm)
                remove_built()
                line = f"run {run + 1} {builder}: cold+cache {cached['seconds']:.2f}s, warm {warm['seconds']:.2f}s"
                print(line, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(rows)


def report(rows: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print("\n| builder | variant | median s (min-max) | steps cached | from the registry | pulls/pushes s |")
    print("|---|---|---|---|---|---|")
    for (builder, name), runs in rows.items():
        cached = f"{runs[-1]['hits']:.0f}/{runs[-1]['steps']:.0f}" if "hits" in runs[-1] else ""
        source = f"{runs[-1]['from_registry']:.0f}" if "from_registry" in runs[-1] else ""
        registry = med([r["registry"] for r in runs]) if "registry" in runs[-1] else ""
        print(f"| {builder} | {name} | {med([r['seconds'] for r in runs])} | {cached} | {source} | {registry} |")
    print()
    for builder in sorted({b for b, _ in rows}):
        cached = statistics.median(r["seconds"] for r in rows[(builder, "B cold + cache")])
        warm = statistics.median(r["seconds"] for r in rows[(builder, "A warm local rebuild")])
        cold = statistics.median(r["seconds"] for r in rows[(builder, "B cold")])
        cli = statistics.median(r["seconds"] for r in rows[(builder, "B CLI cold + cache")])
        print(
            f"{builder}: cold + cache / warm local = {cached / warm:.2f}x (target <= 1.3x); "
            f"cold + cache / cold = {cached / cold:.2f}x; dockapp / CLI (cold + cache) = {cached / cli:.2f}x"
        )


if __name__ == "__main__":
    main()
