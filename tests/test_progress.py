"""What a user sees while the image builds: on a terminal (a pty) and in a CI log (a pipe)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from .helpers import App

SLOW_FIRST_STEP = """
FROM {BUSYBOX}
RUN sleep 2 # {token}
RUN for i in 1 2 3; do echo out-$i; sleep 0.6; done
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

TWO_TESTS = "def test_a(dockapp):\n    pass\n\n\ndef test_b(dockapp):\n    pass\n"


def test_a_ci_log_shows_each_step_once_and_the_outcome_after_the_file_name(app: App, pytester: pytest.Pytester) -> None:
    """Seen before: a 2 s first step showed nothing, the counter stopped at [5/6] (the hidden
    label step), and the outcome letters landed alone on a line."""
    app.dockerfile(SLOW_FIRST_STEP.replace("{token}", uuid.uuid4().hex))
    pytester.makepyfile(test_two=TWO_TESTS)
    result = pytester.runpytest("--dockapp-builder=classic")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "dockapp: building [[]2/6] RUN sleep 2 # *",
            "dockapp: building [[]3/6] RUN for i in 1 2 3; do echo out-$i; sleep 0.6; done",
            "dockapp: building [[]6/6] CMD *",
            "dockapp: built pytest-dockapp/* in *s, 0/5 steps cached",
            "test_two.py ..*",
        ]
    )
    again = pytester.runpytest("--dockapp-builder=classic")  # reused: nothing to watch
    again.assert_outcomes(passed=2)
    again.stdout.no_fnmatch_line("dockapp: build*")


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a pty")
def test_a_terminal_shows_one_live_line_with_elapsed_time_and_output(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(SLOW_FIRST_STEP.replace("{token}", uuid.uuid4().hex))
    pytester.makepyfile(test_two=TWO_TESTS)
    command = f"{sys.executable} -m pytest -p no:cacheprovider --dockapp-builder=classic"
    proc = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        cwd=pytester.path,
        capture_output=True,  # bytes: text mode would turn the live line's \r into newlines
        env={**os.environ, "COLUMNS": "100"},
        timeout=300,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout.decode())  # colours, when the pty has them
    assert proc.returncode == 0, out
    frames = out.split("\r")
    first = [f for f in frames if f.startswith("dockapp: building [2/6] ")]
    assert first and "s RUN sleep 2 #" in first[0]  # the first step, at once, with its elapsed time
    assert any(f.startswith("dockapp: building [3/6] ") and "| out-2" in f for f in frames)  # its last output
    built = next(f for f in frames if f.startswith("dockapp: built "))
    assert built.startswith("dockapp: built pytest-dockapp/") and "0/5 steps cached" in built
    assert "\ntest_two.py .." in out.replace("\r\n", "\n")  # one file name, both letters after it


LATE_APP = """
FROM {BUSYBOX}
RUN sleep 2 # {token}
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["sh", "-c", "sleep 11; exec httpd -f -p 80 -h /www"]
"""


def test_a_ci_log_says_the_wait_moved_from_the_build_to_the_app(app: App, pytester: pytest.Pytester) -> None:
    """Seen before: `still running [3/3] RUN sleep 4 (21s)` long after the build had ended, while
    the container started."""
    app.dockerfile(LATE_APP.replace("{token}", uuid.uuid4().hex))
    pytester.makepyfile(test_one="def test_a(dockapp):\n    pass\n")
    result = pytester.runpytest("--dockapp-builder=classic")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "dockapp: building [[]2/5] RUN sleep 2 # *",
            "dockapp: waiting for the app to start and be ready (dockapp_ready = auto; pytest-dockapp/*",
            "dockapp: still waiting for the app to start and be ready (dockapp_ready = auto; * (1?s)",
            "dockapp: built pytest-dockapp/* in *s, 0/4 steps cached",
        ]
    )
    result.stdout.no_fnmatch_line("dockapp: still running [[]*")
