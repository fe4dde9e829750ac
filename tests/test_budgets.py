"""Budgets: size, layers, wasted bytes, time to ready and build time, as a user asserts them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp import ConfigurationError
from pytest_dockapp.budgets.check import Budget, Figures, check, parse_size
from pytest_dockapp.budgets.layers import walk, walk_image

from .helpers import App

MiB = 1024 * 1024


def test_wasted_bytes_are_what_a_later_layer_deletes_or_overwrites() -> None:
    layers = [
        [("dir", "app", 0), ("file", "app/a", 100), ("file", "app/b", 50), ("dir", "cache", 0), ("file", "cache/x", 7)],
        [("file", "app/a", 10), ("whiteout", "app/b", 0)],  # a overwritten, b deleted
        [("whiteout", "cache", 0), ("opaque", "app", 0), ("file", "app/c", 1)],  # a folder, then an opaque one
    ]
    result = walk(layers)
    assert [x.wasted for x in result.layers] == [157, 10, 0] and result.wasted == 167


def test_a_package_cache_left_in_the_image_is_found() -> None:
    result = walk([[("file", "var/lib/apt/lists/deb_Packages", 40)], [("file", "root/.npm/_cacache/x", 2)]])
    assert result.layers[0].caches == {"var/lib/apt/lists": 40} and result.layers[1].caches == {"root/.npm": 2}


def test_budget_values_are_checked() -> None:
    assert parse_size("80MB") == 80_000_000 and parse_size("64MiB") == 64 * MiB and parse_size(512) == 512
    assert Budget.parse({"wasted": "5%"}).wasted_share == 0.05
    with pytest.raises(ConfigurationError, match="'eighty' is not a size"):
        Budget.parse({"size": "eighty"})
    with pytest.raises(ConfigurationError, match="unknown budget 'sise'"):
        Budget.parse({"sise": "1MB"})


IMPORTED_BASE_APP = """\
FROM python-base
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
RUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*
"""


def test_a_base_layer_without_history_is_never_blamed_on_a_line_and_the_fix_names_the_cache(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytest_dockapp.budgets.layers import Layer, LayerWalk

    (tmp_path / "Dockerfile").write_text(IMPORTED_BASE_APP)
    record: Any = SimpleNamespace(dockerfile=tmp_path / "Dockerfile", target=None)
    apt = "RUN /bin/sh -c apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*"
    pip = "RUN /bin/sh -c pip install --no-cache-dir -r requirements.txt"
    figures = Figures("app", 430_000_000, 4)
    # `docker import` writes a history entry with an empty CreatedBy: it matched every line.
    figures.contributors = [(395_300_000, ""), (30_000_000, apt), (5_480_000, pip)]
    figures.walk = LayerWalk(
        [
            Layer(0, 395_300_000, created_by=""),
            Layer(1, 30_000_000, created_by=apt, caches={"var/cache/apt/archives": 28_000_000}),
            Layer(2, 5_480_000, created_by=pip, caches={"root/.cache/pip": 2_000_000}),
        ]
    )
    failure = check(Budget(size=100_000_000), figures, record=record).failures[0]
    assert "largest layers: base image layer 395.3 MB, line 5 RUN apt-get update" in failure, failure
    assert "line 4 RUN pip install --no-cache-dir -r requirements.txt 5.5 MB" in failure, failure
    # The RUN already removes the apt lists: the waste is in the archives, and its fix is apt-get clean.
    assert "fix: line 5 RUN apt-get update && apt-get install -y curl && …: " in failure, failure
    assert "`&& apt-get clean`" in failure and "(28.0 MB in /var/cache/apt/archives)" in failure, failure
    assert "rm -rf /var/lib/apt/lists" not in failure.split("fix:")[1], failure
    assert "--no-cache-dir" not in failure.split("fix:")[1], failure  # the pip line has it already


def test_junit_build_figures_are_numbers_when_the_build_was_reused() -> None:
    reused = Figures("app", 10, 2, built_here=True)  # a record, and no build ran this session
    assert dict(reused.properties()) == {"size_bytes": "10", "layers": "2", "build_seconds": "0", "build_reused": "1"}
    built = Figures("app", 10, 2, built_here=True, build=1.5)
    assert dict(built.properties())["build_seconds"] == "1.500" and dict(built.properties())["build_reused"] == "0"


def test_a_time_budget_is_skipped_on_a_remote_engine_unless_asked() -> None:
    figures = Figures("app", 1, 1, ready=5.0, ready_samples=3)
    assert check(Budget(ready=1.0), figures, remote=True).skipped
    assert not check(Budget(ready=1.0, time_on_remote=True), figures, remote=True).ok


IMAGE = """
FROM {BUSYBOX}
RUN mkdir -p /www /var/lib/apt/lists && echo hello > /www/index.html \\
    && dd if=/dev/urandom of=/var/lib/apt/lists/deb bs=1M count=2
RUN dd if=/dev/urandom of=/big bs=1M count=3 && dd if=/dev/urandom of=/over bs=1M count=2
RUN rm /big && dd if=/dev/urandom of=/over bs=1M count=1
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

BUDGET_TESTS = """
import pytest

@pytest.mark.dockapp_budget(size="50MB", layers=10, wasted="6MB", ready="60s")
def test_within(dockapp):
    pass

@pytest.mark.dockapp_budget(size="1kB")
def test_size(dockapp):
    pass

@pytest.mark.dockapp_budget(layers=2)
def test_layers(dockapp):
    pass

@pytest.mark.dockapp_budget(wasted="1%")
def test_wasted(dockapp):
    pass

@pytest.mark.dockapp_budget(ready="1ms")
def test_ready(dockapp):
    pass

@pytest.mark.dockapp_budget(build="1ms")
def test_build(dockapp):
    pass
"""


def test_each_budget_passes_and_fails_with_its_explanation(
    app: App, pytester: pytest.Pytester, builder_args: list[str]
) -> None:
    app.dockerfile(IMAGE)
    pytester.makepyfile(BUDGET_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml", "--dockapp-rebuild", *builder_args)
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines(
        [
            "*image * is * MB > budget 1.0 kB; largest layers: line 4 RUN dd if=/dev/urandom of=/big*"
            " 5.2 MB, line 2 RUN mkdir -p /www /var/lib/apt/lists*2.1 MB (of which 2.1 MB /var/lib/apt/lists,"
            " removed nowhere)*",
            "*fix: line 2 RUN mkdir -p /www*: add `&& rm -rf /var/lib/apt/lists/*` to the same RUN (2.1 MB in "
            "/var/lib/apt/lists)",
        ]
    )
    result.stdout.fnmatch_lines(["*image * has 5 layers > budget 2*"])  # busybox's 2, and 3 RUNs
    result.stdout.fnmatch_lines(
        [
            "*image * wastes 5.2 MB > budget 1% of * = *: bytes a later layer deletes or overwrites*"
            "written by: line 4 RUN dd if=/dev/urandom of=/big * 5.2 MB*"
        ]
    )
    result.stdout.fnmatch_lines(["*: ready took *s > budget 0.001s (the median of 1 start(s) this session*"])
    result.stdout.fnmatch_lines(["*: build took *s > budget 0.001s (this session's build)*"])
    result.stdout.fnmatch_lines(["image pytest-dockapp/*: * MB in 5 layers, 5.2 MB wasted"])
    # the hand-computed figure: /big (3 MiB) deleted and /over (2 MiB) overwritten by line 4
    junit = (pytester.path / "junit.xml").read_text()
    assert f'name="dockapp.dockapp.wasted_bytes" value="{5 * MiB}"' in junit
    assert 'name="dockapp.dockapp.layers" value="5"' in junit
    assert re.search(r'name="dockapp.dockapp.build_seconds" value="\d+\.\d+"', junit)
    assert 'name="dockapp.dockapp.build_reused" value="0"' in junit


def test_the_session_budget_settings_fail_the_session_image_once(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(IMAGE)
    pytester.makepyfile("def test_a(dockapp):\n    pass\n\ndef test_b(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-budget-size=1MB")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*image pytest-dockapp/* is * MB > budget 1.0 MB; largest layers: line 4 RUN*",
            "*hint: the dockapp_budget_* settings set these limits*",
            "*(the session image's budget failed: see the first error above*",
        ]
    )


WALKED = {
    "a folder removed whole": (
        "RUN mkdir /d && dd if=/dev/urandom of=/d/a bs=1M count=1 && dd if=/dev/urandom of=/d/b bs=1M count=1\n"
        "RUN rm -rf /d\n",
        2 * MiB,
    ),
    "a folder emptied and filled again in one RUN": (
        "RUN mkdir /d && dd if=/dev/urandom of=/d/a bs=1M count=3\n"
        "RUN rm -rf /d && mkdir /d && dd if=/dev/urandom of=/d/b bs=1M count=1\n",
        3 * MiB,
    ),
}


@pytest.mark.parametrize("case", list(WALKED))
def test_the_wasted_figure_matches_the_hand_computed_one(
    busybox: str, docker_client: Any, tmp_path: Path, case: str
) -> None:
    steps, wasted = WALKED[case]
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox}\n{steps}")
    tag = f"dockapp-test/corpus-walk-{abs(hash(case))}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True)
    try:
        assert walk_image(docker_client, tag).wasted == wasted
    finally:
        docker_client.api.remove_image(tag)


SIZE_LINT = """
FROM {BUSYBOX} AS build
RUN apt-get update && apt-get install -y gcc
RUN pip install -r requirements.txt

FROM {BUSYBOX}
ENV PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y curl
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/root/.npm npm ci
RUN pip install flask
RUN npm ci
COPY --from=build /out /out
"""


def test_the_lint_flags_package_caches_left_in_carried_layers_only(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("Dockerfile").write_text(SIZE_LINT.replace("{BUSYBOX}", "scratch").lstrip())
    result = pytester.runpytest("--dockapp-lint-only")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*/Dockerfile:7: `RUN apt-get update && apt-get install -y curl` leaves apt's package lists"
            " (/var/lib/apt/lists, tens of MB) in its layer and pulls recommended packages too",
            "  fix: end the same RUN with `&& rm -rf /var/lib/apt/lists/*`, and install with --no-install-recommends",
            "*/Dockerfile:11: `RUN npm ci` leaves npm's cache (/root/.npm) in its layer",
            "  fix: end the same RUN with `&& npm cache clean --force`*",
        ]
    )
    out = result.stdout.str()
    # the builder stage's layers are not shipped; ENV PIP_NO_CACHE_DIR, a cache mount and a clean RUN are fine
    assert "Dockerfile:2:" not in out and "Dockerfile:3:" not in out and "pip" not in out
    assert "Dockerfile:8:" not in out and "Dockerfile:9:" not in out


def test_an_oci_layout_export_is_walked_too() -> None:
    """Docker 25+ exports blobs/sha256/<digest>, config and layers alike; the engine here is older."""
    import io
    import json
    import tarfile

    def tar_of(files: dict[str, bytes]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    layers = [tar_of({"big": b"x" * 3000}), tar_of({".wh.big": b""})]
    config = json.dumps({"history": [{"created_by": "RUN a"}, {"created_by": "RUN b"}]}).encode()
    manifest = json.dumps([{"Config": "blobs/sha256/c", "Layers": ["blobs/sha256/l0", "blobs/sha256/l1"]}]).encode()
    export = tar_of({"blobs/sha256/l0": layers[0], "blobs/sha256/c": config, "blobs/sha256/l1": layers[1],
                     "manifest.json": manifest})  # fmt: skip

    class Api:
        def get_image(self, image: str, chunk_size: int) -> Any:
            return iter([export[i : i + 777] for i in range(0, len(export), 777)])

    class Client:
        api = Api()

    result = walk_image(Client(), "img")  # type: ignore[arg-type]
    assert result.wasted == 3000 and [x.created_by for x in result.layers] == ["RUN a", "RUN b"]


def test_a_budget_on_a_service_the_compose_file_lacks_fails_before_anything_starts(
    app: App, pytester: pytest.Pytester
) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text("services:\n  web:\n    build: .\n")
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(
        'import pytest\n\n@pytest.mark.dockapp_budget(size="1GB", service="ghost")\ndef test_f():\n    pass\n'
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*dockapp_budget marker on *: service='ghost' is not a service of *; its services: web"]
    )
    text = result.stdout.str()
    assert "KeyError" not in text and "built " not in text and "stack dockapp-" not in text, text
