"""Coverage of the app's own code from inside its container (``--dockapp-cov``), as a user runs
it: a Node app, its lines mapped back to the repository by the Dockerfile's COPY lines."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from typing import Any

import pytest

from .helpers import ROOT, App

SERVER = """const http = require("http");
const server = http.createServer((req, res) => {
  if (req.url === "/a") {
    res.end("a\\n");
    return;
  }
  if (req.url === "/b") {
    res.end("b\\n");
    return;
  }
  if (req.url === "/crash") {
    process.exit(3);
  }
  res.end("root\\n");
});
server.listen(80);
"""

DOCKERFILE = """FROM {node}
WORKDIR /srv
COPY src/server.js ./app/
USER 65534
EXPOSE 80
CMD ["node", "app/server.js"]
"""


def _node_app(pytester: pytest.Pytester, node_base: str) -> None:
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "server.js").write_text(SERVER)
    (pytester.path / "Dockerfile").write_text(DOCKERFILE.format(node=node_base))


def _lcov(text: str) -> dict[int, int]:
    return {int(n): int(c) for n, c in (line[3:].split(",") for line in text.splitlines() if line.startswith("DA:"))}


def test_a_node_apps_lines_are_covered_by_the_routes_its_tests_hit_and_no_others(
    app: App, pytester: pytest.Pytester, node_base: str
) -> None:
    _node_app(pytester, node_base)
    pytester.makepyfile(
        """
        def test_a(dockapp):
            assert dockapp.get("/a").text == "a\\n"

        def test_root_then_a_crash_on_a_fresh_app(dockapp_fresh):
            import pytest, requests

            assert dockapp_fresh.get("/").text == "root\\n"
            with pytest.raises(requests.ConnectionError):
                dockapp_fresh.get("/crash")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-cov", "--dockapp-cov-lcov=cov/lcov.info")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["app coverage: src/server.js * % (missed 8-10)"])
    lcov = (pytester.path / "cov" / "lcov.info").read_text()
    assert f"SF:{pytester.path / 'src' / 'server.js'}" in lcov
    hits = _lcov(lcov)
    assert hits[4] > 0, "the /a route the session app served"
    assert hits[14] > 0, "the root route the fresh app served: each container's data is kept"
    assert hits[12] > 0, "what a crashed app ran, written at its exit"
    assert hits[8] == 0, "the /b route no test asked for"
    # under pytest-xdist: every worker's data, combined once by the controller
    (pytester.path / "cov" / "lcov.info").unlink()
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-n", "2", "--dockapp-cov", "--dockapp-cov-lcov=cov/lcov.info"
    )
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("app coverage: src/server.js") == 1, result.stdout.str()
    hits = _lcov((pytester.path / "cov" / "lcov.info").read_text())
    assert hits[4] > 0 and hits[14] > 0 and hits[8] == 0


def test_an_app_whose_language_cannot_be_told_is_an_error_that_says_so(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile("def test_home(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-cov")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*cannot tell the language of image *, so its coverage cannot be measured*", "*hint: coverage is measured*"]
    )


@pytest.mark.remote
def test_a_python_apps_own_lines_show_in_pytest_covs_report_as_its_readme_runs_it(
    python_base: str, docker_client: Any
) -> None:
    readme = (ROOT / "example-python-app" / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "BASE_IMAGE=dockapp-test/python:bookworm" in x)
    words = shlex.split(line.replace("dockapp-test/python:bookworm", python_base))
    cmd = [sys.executable, "-m", *words, "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    report = re.search(r"^example-python-app/app\.py\s+(\d+)\s+(\d+)\s+(\d+)%\s*(.*)$", out.stdout, re.M)
    assert report is not None, out.stdout
    missed = report.group(4)
    source = (ROOT / "example-python-app" / "app.py").read_text().splitlines()
    not_found = next(n for n, text in enumerate(source, 1) if '"not found"' in text)
    hello = next(n for n, text in enumerate(source, 1) if '"hello": name' in text)
    assert str(not_found) in missed.replace("-", " ").split(), out.stdout  # the route no test asks for
    assert str(hello) not in missed, out.stdout  # the route a test asked for, inside the container
    assert not list(ROOT.glob(".coverage.dockapp.*")), "pytest-cov combined (and removed) the app's data"
    off = subprocess.run([*cmd, "-o", "dockapp_cov=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert re.search(r"^example-python-app/app\.py\s+\d+\s+\d+\s+0%", off.stdout, re.M), off.stdout


def test_a_python_in_the_image_that_cannot_run_coverage_is_named_with_both_versions(
    app: App, pytester: pytest.Pytester, python_base: str
) -> None:
    # coverage.py needs sqlite3: without it, its import fails in the app's interpreter
    (pytester.path / "app.py").write_text(
        "from http.server import HTTPServer, BaseHTTPRequestHandler\n"
        "HTTPServer(('0.0.0.0', 8000), BaseHTTPRequestHandler).serve_forever()\n"
    )
    (pytester.path / "Dockerfile").write_text(
        f"FROM {python_base}\nRUN rm -f /usr/lib/python3*/lib-dynload/_sqlite3*\nCOPY app.py /srv/\n"
        'EXPOSE 8000\nCMD ["python3", "/srv/app.py"]\n'
    )
    pytester.makepyfile("def test_up(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-cov")
    result.assert_outcomes(passed=1)
    import coverage

    result.stdout.fnmatch_lines(
        [f"app coverage: *: the image's Python 3.* could not start this machine's coverage.py {coverage.__version__} *"]
    )


def test_a_read_only_service_is_an_error_that_says_why_its_coverage_cannot_be_measured(
    app: App, pytester: pytest.Pytester, node_base: str
) -> None:
    _node_app(pytester, node_base)
    (pytester.path / "compose.yaml").write_text("services:\n  web: {build: ., read_only: true}\n")
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile("def test_up(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-cov")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*web from * has a read-only root filesystem, so its coverage cannot be measured*", "*drop read_only*"]
    )
