"""A Python app's coverage, by the coverage.py of this machine, copied into its container.

The image is not changed: coverage.py's package, a ``sitecustomize`` that starts it
(``COVERAGE_PROCESS_START``) and its configuration are copied in, and ``PYTHONPATH`` points
there. The compiled tracer is copied too; where the image's Python cannot load it (another
version), coverage.py falls back to its pure-Python tracer. A thread of the app's saves the data
so far when the trigger file changes; ``sigterm`` and the exit save the rest. The data's paths in
the image become the repository's by the Dockerfile's COPY lines.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.appcov.paths import PathMap
from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.run.options import InjectedFile, Preparation

if TYPE_CHECKING:
    from coverage import CoverageData

#: Runs in the app's interpreter, of any version: no f-strings, nothing that may not be there.
SITECUSTOMIZE = """# pytest-dockapp: measure this interpreter with coverage.py, then the image's own sitecustomize.
import os, sys


def _dockapp_cov():
    home = os.environ.get("DOCKAPP_COV_HOME", "")
    try:
        import coverage
        cov = coverage.process_startup()
    except Exception as exc:  # never break the app: say why where the plugin reads it
        with open(os.path.join(home, "error"), "w") as fh:
            fh.write("%d.%d.%d|%s: %s" % (sys.version_info[:3] + (type(exc).__name__, exc)))
        return
    if cov is None:
        return
    import threading, time

    def watch():
        seen, trigger = 0.0, os.path.join(home, "flush")
        while True:
            time.sleep(0.05)
            try:
                mtime = os.stat(trigger).st_mtime
            except OSError:
                continue
            if mtime > seen:
                seen = mtime
                cov.save()
                open(os.path.join(home, "flushed-%d-%d" % (os.getpid(), mtime)), "w").close()

    thread = threading.Thread(target=watch, name="dockapp-cov")
    thread.daemon = True
    thread.start()


_dockapp_cov()
del _dockapp_cov
_here = os.path.dirname(os.path.abspath(__file__))
for _folder in sys.path:
    _other = os.path.join(_folder, "sitecustomize.py")
    if _folder and os.path.abspath(_folder) != _here and os.path.isfile(_other):
        with open(_other) as _fh:
            exec(compile(_fh.read(), _other, "exec"))
        break
"""

WORDS = ("python", "python3", "gunicorn", "uvicorn", "flask", "hypercorn", "daphne", "waitress-serve", "celery")


def is_python(words: list[str], env: set[str]) -> bool:
    """Whether the image runs Python, by its command's words and its environment's names."""
    return any(w in WORDS or w.startswith("python3.") for w in words) or "PYTHON_VERSION" in env


def preparation(home: str, env: Mapping[str, str], image_env: Mapping[str, str], branch: bool) -> Preparation:
    """What to copy into the container and set, to measure its Python."""
    try:
        import coverage
    except ImportError:
        raise DockappError(
            "the app runs Python, and its coverage needs coverage.py on this machine",
            hint="pip install coverage (pytest-cov brings it), or drop --dockapp-cov",
        ) from None
    package = Path(coverage.__file__).parent
    files = [InjectedFile(home, "folder", "", mode=0o777), InjectedFile(f"{home}/data", "folder", "", mode=0o777)]
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files.append(InjectedFile(f"{home}/lib/coverage/{path.relative_to(package).as_posix()}", "file", str(path)))
    rc = f"[run]\ndata_file = {home}/data/.coverage\nparallel = true\nsigterm = true\nbranch = {branch}\n"
    files += [
        InjectedFile(f"{home}/lib/sitecustomize.py", "content", SITECUSTOMIZE),
        InjectedFile(f"{home}/coveragerc", "content", rc),
    ]
    search = ":".join(filter(None, [f"{home}/lib", env.get("PYTHONPATH") or image_env.get("PYTHONPATH")]))
    variables = (("PYTHONPATH", search), ("COVERAGE_PROCESS_START", f"{home}/coveragerc"), ("DOCKAPP_COV_HOME", home))
    return Preparation(env=variables, files=tuple(files))


def failure(error: bytes) -> str:
    """What the app's ``error`` file says, as a line that names both Python versions."""
    import coverage

    version, _, why = error.decode("utf-8", "replace").partition("|")
    return (
        f"the image's Python {version} could not start this machine's coverage.py {coverage.__version__} ({why}); "
        "install a coverage.py that supports it here, or measure with a Python that it supports"
    )


def remap(data_files: list[bytes], paths: PathMap) -> CoverageData | None:
    """The app's data files as one, its paths the repository's (files no COPY line sent left out)."""
    from coverage import CoverageData

    merged: CoverageData | None = None
    with tempfile.TemporaryDirectory(prefix="dockapp-cov-") as tmp:
        for n, blob in enumerate(data_files):
            source = Path(tmp) / f"in-{n}"
            source.write_bytes(blob)
            data = CoverageData(basename=str(source))
            data.read()
            if merged is None:
                merged = CoverageData(no_disk=True)
            for measured in data.measured_files():
                repo = paths.to_repo(measured)
                if repo is None:
                    continue
                if data.has_arcs():
                    merged.add_arcs({str(repo): data.arcs(measured) or []})
                else:
                    merged.add_lines({str(repo): data.lines(measured) or []})
    return merged


def line_hits(data: CoverageData) -> dict[Path, dict[int, int]]:
    """Per file, each statement: 1 if it ran, else 0 (by coverage.py's analysis of the source)."""
    import coverage

    cov = coverage.Coverage(data_file=None)
    cov.get_data().update(data)
    out: dict[Path, dict[int, int]] = {}
    for measured in data.measured_files():
        try:
            _, statements, _, missing, _ = cov.analysis2(measured)
        except Exception:  # a file coverage.py cannot parse is left out, not fatal
            continue
        out[Path(measured)] = {n: 0 if n in missing else 1 for n in statements}
    return out


def write_for_pytest_cov(data: CoverageData, data_file: str, suffix: str) -> None:
    """Put ``data`` where pytest-cov combines parallel data files, before it does."""
    from coverage import CoverageData

    target = CoverageData(basename=data_file, suffix=suffix)
    target.update(data)
    target.write()


def env_of(image: Mapping[str, Any]) -> dict[str, str]:
    return dict(str(e).partition("=")[::2] for e in (image.get("Config") or {}).get("Env") or [])
