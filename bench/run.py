#!/usr/bin/env python3
"""pytest-dockapp benchmarks: every workload is a real pytest process, next to the raw-CLI floor and peers.

    python bench/run.py                 # all workloads, 5 measured runs each -> bench/RESULTS.md
    python bench/run.py --runs 9 --only W1,W2

Each (workload, variant) gets a fresh project folder, one unmeasured warm-up run
(so images come from the layer cache, as in a developer's second run), then
``--runs`` measured runs. Results: median and min-max. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("DOCKAPP_BENCH_DIR", "/tmp/dockapp-bench"))
BUSYBOX = os.environ.get("DOCKAPP_BENCH_BASE", "dockapp-test/busybox:1")
ANALYSIS_MARKER = "<!-- analysis: kept across reruns -->"
EXTRAS = ("latency", "teardown", "build")  # per-run values the tests write to <name>.jsonl
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]

HTTPD_CMD = '["httpd", "-f", "-p", "80", "-h", "/www"]'
FAST_HEALTHCHECK = "wget -q -O /dev/null http://127.0.0.1/ || exit 1"
DOCKERFILES = {
    "fast": f"""
        FROM {BUSYBOX}
        RUN mkdir -p /www && echo hello > /www/index.html
        EXPOSE 80
        HEALTHCHECK --interval=30s CMD {FAST_HEALTHCHECK}
        CMD {HTTPD_CMD}
    """,
    # Starts listening after 2 s and logs the moment (microseconds, shared kernel clock) just before.
    "slow": f"""
        FROM {BUSYBOX}
        RUN mkdir -p /www && echo hello > /www/index.html
        EXPOSE 80
        CMD ["sh", "-c", "sleep 2; echo LISTEN $(adjtimex | sed -n 's/.*tv_sec: *//p') \\
$(adjtimex | sed -n 's/.*tv_usec: *//p'); exec httpd -f -p 80 -h /www"]
    """,
    # PID 1 has no SIGTERM handler: `docker stop` waits its full 10 s grace period.
    "stubborn": f"""
        FROM {BUSYBOX}
        RUN mkdir -p /www && echo hello > /www/index.html
        EXPOSE 80
        CMD {HTTPD_CMD}
    """,
    "cache": f"""
        FROM {BUSYBOX}
        WORKDIR /app
        COPY package.json /app/
        RUN cp package.json installed.json
        COPY . /app
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/app"]
    """,
    "context": f"""
        FROM {BUSYBOX}
        COPY . /ctx
        RUN ls -R /ctx | wc -l
    """,
}

# -- variants: conftest.py files that provide the `app_url` fixture ------------------------------

FLOOR_UP = r"""#!/bin/sh
# The raw CLI floor: build, run with a random loopback port, poll with curl every 10 ms.
set -e
tag=$1
docker build -q -t "$tag" . >/dev/null
cid=$(docker run -d -p 127.0.0.1::80 "$tag")
port=$(docker port "$cid" 80/tcp | head -n1 | sed 's/.*://')
until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.01; done
# reference variant only: also run the image's HEALTHCHECK once, as the plugin does
[ -z "${FLOOR_HEALTHCHECK:-}" ] || docker exec "$cid" sh -c "$FLOOR_HEALTHCHECK"
echo "$cid $port"
"""

FLOOR_CONFTEST = """
import json, os, subprocess, time, pytest

def _up():
    cid, port = subprocess.check_output(["sh", "floor-up.sh", "bench-floor:" + os.path.basename(os.getcwd())],
                                        text=True).split()
    return cid, f"http://127.0.0.1:{port}"

def _down(cid):
    start = time.perf_counter()
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)
    with open("teardown.jsonl", "a") as fh:
        fh.write(json.dumps(time.perf_counter() - start) + "\\n")

@pytest.fixture(scope="SCOPE")
def app_url():
    cid, url = _up()
    yield url
    _down(cid)
"""

DOCKAPP_CONFTEST = {
    "session": """
import pytest

@pytest.fixture
def app_url(dockapp):
    return dockapp.url
""",
    "function": """
import pytest

@pytest.fixture
def app_url(dockapp_factory):
    return dockapp_factory().url
""",
}

TESTCONTAINERS_CONFTEST = """
import json, os, time, pytest
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
from testcontainers.core.container import DockerContainer
from testcontainers.core.image import DockerImage
from testcontainers.core.wait_strategies import HttpWaitStrategy

@pytest.fixture(scope="session")
def image():
    return DockerImage(path=".", tag="bench-tc:" + os.path.basename(os.getcwd())).build()

@pytest.fixture(scope="SCOPE")
def app_url(image):
    # its best setting: an HTTP wait polling every 10 ms (the default polls once a second)
    wait = HttpWaitStrategy(80).for_status_code(200).with_poll_interval(0.01)
    c = DockerContainer(str(image)).with_exposed_ports(80).waiting_for(wait)
    c.start()
    yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(80)}"
    start = time.perf_counter()
    c.stop()
    with open("teardown.jsonl", "a") as fh:
        fh.write(json.dumps(time.perf_counter() - start) + "\\n")
"""

PDT_CONFTEST = """
import pytest
from pytest_docker_tools import build, container

image = build(path=".")
app = container(image="{image.id}", ports={"80/tcp": None}, scope="SCOPE")

@pytest.fixture
def app_url(app):
    return f"http://127.0.0.1:{app.ports['80/tcp'][0]}"
"""

TEST_GET = """
import requests

def test_get_{n}(app_url):
    assert requests.get(app_url, timeout=5).status_code == 200
"""

TEST_LATENCY = """
import json, time, requests

def test_latency(app_url, request):
    body_start = time.time()
    logs = LOGS(request)
    sec, usec = [line for line in logs.splitlines() if line.startswith("LISTEN")][0].split()[1:3]
    with open("latency.jsonl", "a") as fh:
        fh.write(json.dumps(body_start - (int(sec) + int(usec) / 1e6)) + "\\n")
    assert requests.get(app_url, timeout=5).status_code == 200
"""

LOGS_BY_VARIANT = {
    "floor": 'lambda r: __import__("subprocess").check_output("docker logs $(docker ps -lq)", shell=True, text=True)',
    "dockapp": 'lambda r: r.getfixturevalue("dockapp").logs()',
    "testcontainers": 'lambda r: __import__("subprocess").check_output("docker logs $(docker ps -lq)", shell=True, '
    "text=True)",
    "pytest-docker-tools": 'lambda r: r.getfixturevalue("app").logs()',
}


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- running -----------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    variant: str
    walls: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    command: str = ""
    failures: int = 0
    notes: list[str] = field(default_factory=list)


def write_project(path: Path, dockerfile: str, conftest: str, tests: dict[str, str]) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip())
    (path / "conftest.py").write_text(conftest)
    (path / "floor-up.sh").write_text(FLOOR_UP)
    (path / ".dockerignore").write_text("*.py\n*.jsonl\n__pycache__\n.pytest_cache\n")
    (path / "pytest.ini").write_text("[pytest]\n")
    for name, body in tests.items():
        (path / name).write_text(body)


@dataclass
class Case:
    """One (workload, variant): a project folder and the pytest arguments that run it."""

    result: Result
    path: Path
    args: list[str]
    env: dict[str, str] | None = None
    prepare: Callable[[Path], None] | None = None


def run_cases(cases: list[Case], runs: int) -> None:
    """One warm-up run per case, then ``runs`` rounds that run every case once each.

    Interleaving puts engine drift (this machine's medians move by 20 % over minutes) on
    every variant alike instead of on whichever block ran during a slow spell.
    """
    for case in cases:
        case.result.command = " ".join(["python", "-m", "pytest", *(PYTEST + case.args)[3:]])
    for i in range(runs + 1):  # round 0 warms the layer cache and is not counted
        for case in cases:
            run_once(case, measured=i > 0, label=f"run {i}")


def run_once(case: Case, measured: bool, label: str) -> None:
    result, path = case.result, case.path
    for extra in EXTRAS:
        (path / f"{extra}.jsonl").unlink(missing_ok=True)
    if case.prepare is not None:
        case.prepare(path)
    start = time.perf_counter()
    proc = subprocess.run(
        PYTEST + case.args, cwd=path, capture_output=True, text=True, env={**os.environ, **(case.env or {})}
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        result.failures += 1
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        print(f"  !! {result.workload}/{result.variant} {label} failed:\n{tail}", file=sys.stderr)
        return
    if not measured:
        return
    result.walls.append(wall)
    for extra in EXTRAS:
        f = path / f"{extra}.jsonl"
        if f.exists():
            result.extras.setdefault(extra, []).extend(json.loads(x) for x in f.read_text().split())
    for m in re.finditer(r"removed in (\d+\.\d+)s", proc.stdout):
        result.extras.setdefault("teardown", []).append(float(m.group(1)))
    if result.variant.startswith("dockapp"):
        builds = len(re.findall(r"\bbuilt pytest-dockapp/", proc.stdout))
        result.extras.setdefault("builds", []).append(float(builds))
        unchanged = proc.stdout.count("nothing it is built from changed since its last build")
        result.extras.setdefault("unchanged", []).append(float(unchanged))


def variants(scope: str = "session", dockerfile: str = "") -> dict[str, tuple[str, dict[str, str]]]:
    """variant name -> (conftest body or "floor", extra environment)."""
    out: dict[str, tuple[str, dict[str, str]]] = {
        "floor": ("floor", {}),
        "dockapp": (DOCKAPP_CONFTEST[scope], {}),
        "testcontainers": (TESTCONTAINERS_CONFTEST.replace("SCOPE", scope), {}),
    }
    if have("pytest_docker_tools"):
        pdt_scope = "function" if scope == "function" else "session"
        out["pytest-docker-tools"] = (PDT_CONFTEST.replace("SCOPE", pdt_scope), {})
    if dockerfile == "fast":
        # The floor never runs the image's HEALTHCHECK; the plugin must (it is the readiness
        # contract). This row prices that one `docker exec` with the raw CLI.
        out["reference: floor + HEALTHCHECK exec"] = ("floor", {"FLOOR_HEALTHCHECK": FAST_HEALTHCHECK})
    return out


def conftest_for(variant: str, body: str, scope: str) -> str:
    return FLOOR_CONFTEST.replace("SCOPE", scope) if body == "floor" else body


def quiet_peers(variant: str) -> list[str]:
    """Installed peer plugins load into every pytest run; each variant runs without the others'."""
    return ["-p", "no:docker_tools"] if have("pytest_docker_tools") and variant != "pytest-docker-tools" else []


def bench_w0(runs: int) -> list[Result]:
    """Plugin load cost in a run that uses no container: ours vs none, and the peers' cost."""
    path = WORK / "w0"
    write_project(path, DOCKERFILES["fast"], "", {"test_plain.py": "def test_plain():\n    pass\n"})
    (path / "conftest.py").unlink()
    tc = WORK / "w0-tc"
    write_project(
        tc,
        DOCKERFILES["fast"],
        "import testcontainers.core.container  # what a conftest using it pays\n",
        {"test_plain.py": "def test_plain():\n    pass\n"},
    )
    none = ["-p", "no:dockapp", *quiet_peers("none")]
    cases = [
        ("floor: no container plugin (-p no:dockapp)", path, none),
        ("dockapp", path, quiet_peers("dockapp")),
        ("testcontainers (imported by conftest)", tc, none),
    ]
    if have("pytest_docker_tools"):
        cases.append(("pytest-docker-tools (its plugin loaded)", path, ["-p", "no:dockapp"]))
    todo = [Case(Result("W0 import", variant), where, args) for variant, where, args in cases]
    run_cases(todo, runs * 4)  # tiny differences: more runs
    return [c.result for c in todo]


def bench_simple(
    workload: str,
    dockerfile: str,
    test: str,
    runs: int,
    scope: str = "session",
    n_tests: int = 1,
    args: list[str] | None = None,
    only: list[str] | None = None,
) -> list[Result]:
    todo = []
    for variant, (body, env) in variants(scope, dockerfile).items():
        if only and variant not in only:
            continue
        path = WORK / re.sub(r"\W+", "-", f"{workload}-{variant}-{scope}").lower()
        tests = {
            f"test_{n}.py": test.replace("{n}", str(n)).replace(
                "LOGS(request)", f"({LOGS_BY_VARIANT.get(variant, LOGS_BY_VARIANT['floor'])})(request)"
            )
            for n in range(n_tests)
        }
        write_project(path, DOCKERFILES[dockerfile], conftest_for(variant, body, scope), tests)
        r = Result(workload, variant + ("" if scope == "session" else f" ({scope} scope)"))
        todo.append(Case(r, path, list(args or []) + quiet_peers(variant), env=env))
    run_cases(todo, runs)
    return [c.result for c in todo]


def docker_stop_reference() -> Result:
    """What a graceful `docker stop` costs on the same stubborn image (measured once: it takes 10 s)."""
    path = WORK / "w3-stubborn-stop-dockapp-session"
    tag = "bench-stubborn-ref"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(path)], check=True, capture_output=True)
    cid = subprocess.check_output(["docker", "run", "-d", tag], text=True).strip()
    start = time.perf_counter()
    subprocess.run(["docker", "stop", cid], check=True, capture_output=True)
    stop = time.perf_counter() - start
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)
    r = Result("W3 stubborn-stop", "reference: docker stop (1 run)", command=f"docker stop {cid[:12]}")
    r.extras["teardown"] = [stop]
    return r


def bench_w6(runs: int) -> list[Result]:
    todo = []
    floor_test = """
import shutil, subprocess, tempfile, time

def test_cache_floor(tmp_path):
    ctx = tmp_path / "ctx"
    shutil.copytree(".", ctx, ignore=shutil.ignore_patterns("*.py", "*.jsonl", "__pycache__"))
    subprocess.run(["docker", "build", "-q", "-t", "bench-floor-cache", str(ctx)], check=True, capture_output=True)
    with open(ctx / "server.js", "a") as fh:
        fh.write("\\n" + str(time.time()))
    subprocess.run(["docker", "build", "-q", "-t", "bench-floor-cache", str(ctx)], check=True, capture_output=True)
"""
    ours = """
import pytest

@pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN cp package.json"])
def test_cache():
    pass
"""
    for variant, test in (("floor", floor_test), ("dockapp", ours)):
        path = WORK / f"w6-{variant}"
        write_project(path, DOCKERFILES["cache"], "", {"test_cache.py": test})
        (path / "package.json").write_text('{"name": "bench"}\n')
        (path / "server.js").write_text("console.log(1)\n")
        todo.append(Case(Result("W6 cache-check", variant), path, quiet_peers(variant)))
    run_cases(todo, runs)
    return [c.result for c in todo]


def bench_w7(runs: int, sizes: tuple[int, ...]) -> list[Result]:
    out = []
    # Each side also records its build call alone: the context cost without process start-up.
    floor_test = """
import subprocess, time

def test_build():
    start = time.perf_counter()
    subprocess.run(["docker", "build", "-q", "-t", "bench-floor-ctx", "."], check=True, capture_output=True)
    with open("build.jsonl", "a") as fh:
        fh.write(str(time.perf_counter() - start) + "\\n")
"""
    ours = """
def test_build(dockapp_image):
    with open("build.jsonl", "a") as fh:
        record = dockapp_image.record
        fh.write(str(record.reuse_seconds if record.reused else record.seconds) + "\\n")
"""
    for size in sizes:
        for ignored in (False, True):
            todo = []
            for variant, test in (("floor", floor_test), ("dockapp", ours)):
                path = WORK / f"w7-{size}-{ignored}-{variant}"
                write_project(path, DOCKERFILES["context"], "", {"test_build.py": test})
                if ignored:
                    (path / ".dockerignore").write_text("*.py\n*.jsonl\n__pycache__\n.pytest_cache\nbulk\n")
                for i in range(size):
                    d = path / "bulk" / f"d{i // 1000}"
                    d.mkdir(parents=True, exist_ok=True)
                    (d / f"f{i}.txt").write_text(f"{i}\n")
                label = f"W7 context {size // 1000}k files" + (", ignored" if ignored else "")
                todo.append(Case(Result(label, variant), path, quiet_peers(variant)))
            run_cases(todo, runs)
            out.extend(c.result for c in todo)
    return out


# -- report ------------------------------------------------------------------------------------


def fmt(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    v = [x * scale for x in values]
    digits = 3 if unit == "s" else 1
    return f"{statistics.median(v):.{digits}f}{unit} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def report(results: list[Result], runs: int, started: float) -> str:
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Benchmark results",
        "",
        f"Engine {engine}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; {runs} measured runs per row "
        f"({runs * 3} for W1, W3, W4 session and W5, {runs * 2} for W2, {runs * 4} for W0) after one warm-up "
        "run, variants interleaved run by run; median (min–max); package byte-compiled first. "
        "Produced by `python bench/run.py` in "
        f"{time.time() - started:.0f}s on {time.strftime('%Y-%m-%d')}.",
        "",
        "| workload | variant | wall | vs floor | extra | command |",
        "|---|---|---|---|---|---|",
    ]
    floors = {r.workload: statistics.median(r.walls) for r in results if r.variant.startswith("floor") and r.walls}
    # W0 is about added start-up time: show the difference, not a ratio
    for r in results:
        base = floors.get(r.workload)
        ratio = f"{statistics.median(r.walls) / base:.2f}×" if base and r.walls else ""
        if r.workload.startswith("W0") and base and r.walls:
            ratio = f"{(statistics.median(r.walls) - base) * 1000:+.0f} ms"
        extras = []
        if "latency" in r.extras:
            extras.append("detection latency " + fmt(r.extras["latency"], "ms", 1000))
        if "teardown" in r.extras:
            extras.append("teardown " + fmt(r.extras["teardown"]))
        if "build" in r.extras:
            extras.append("build call " + fmt(r.extras["build"]))
        if "builds" in r.extras and r.workload.startswith("W5"):
            extras.append(
                f"builds per run {statistics.median(r.extras['builds']):.0f}, unchanged builds reused "
                f"{statistics.median(r.extras['unchanged']):.0f}"
            )
        if r.failures:
            extras.append(f"{r.failures} failed runs")
        lines.append(f"| {r.workload} | {r.variant} | {fmt(r.walls)} | {ratio} | {'; '.join(extras)} | `{r.command}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--sizes", default="1000,10000,50000", help="W7 context sizes")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    opts = ap.parse_args()
    only = {w.strip().upper() for w in opts.only.split(",") if w.strip()}
    subprocess.run([str(HERE.parent / ".ci" / "make-bases"), "busybox"], check=True)
    # The installed peers come byte-compiled (pip compiles wheels); an editable install only
    # writes .pyc files on first import, and never under PYTHONDONTWRITEBYTECODE=1 (set on
    # these machines), which would charge ~27 ms of compiling to every dockapp run.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "pytest_dockapp")], check=True)
    started = time.time()
    results: list[Result] = []
    short = opts.runs * 3
    plan: list[tuple[str, Callable[[], list[Result]]]] = [
        ("W0", lambda: bench_w0(opts.runs)),
        # Sub-second workloads get 3x the rounds: this machine's run-to-run spread (±10 %) is
        # larger than the 5 % the targets ask to resolve.
        ("W1", lambda: bench_simple("W1 ready-fast", "fast", TEST_GET, short)),
        ("W2", lambda: bench_simple("W2 ready-slow", "slow", TEST_LATENCY, opts.runs * 2)),
        ("W3", lambda: [*bench_simple("W3 stubborn-stop", "stubborn", TEST_GET, short), docker_stop_reference()]),
        (
            "W4",
            lambda: (
                bench_simple("W4 ten-tests", "fast", TEST_GET, short, n_tests=10)
                + bench_simple("W4 ten-tests (function)", "fast", TEST_GET, opts.runs, scope="function", n_tests=10)
            ),
        ),
        ("W5", lambda: bench_simple("W5 xdist -n 2", "fast", TEST_GET, short, n_tests=4, args=["-n", "2"])),
        ("W6", lambda: bench_w6(opts.runs)),
        ("W7", lambda: bench_w7(opts.runs, tuple(int(s) for s in opts.sizes.split(",")))),
    ]
    for name, fn in plan:
        if only and name not in only:
            continue
        print(f"== {name}", file=sys.stderr)
        try:
            rows = fn()
        except Exception as exc:  # one broken workload must not lose the others' numbers
            print(f"  !! {name} failed: {exc!r}", file=sys.stderr)
            rows = [Result(name, f"failed: {exc!r}"[:80], failures=1)]
        for r in rows:
            print(f"   {r.workload:28} {r.variant:34} {fmt(r.walls)}", file=sys.stderr)
            results.append(r)
    text = report(results, opts.runs, started)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The hand-written analysis below the marker survives a rerun; only the table is replaced.
    old = out.read_text() if out.exists() else ""
    if ANALYSIS_MARKER in old:
        text += "\n" + old[old.index(ANALYSIS_MARKER) :]
    out.write_text(text)
    print(text)
    return 0 if all(r.failures == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
