"""A test always runs exactly the image built from what it asked for.

Each test here reproduces one way the plugin could hand a test an image built from other
inputs: a tag shared by two specs, a reused build whose inputs had changed, a prebuilt
image ignored by the factory, another session removing the image. All run real pytest
sessions against the real engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .helpers import HOLD_TEST, HOME_TEST, App, pytest_cmd, start_holder

# The served text is the build arg MSG: what each test asks for is visible in what it gets.
MSG_DOCKERFILE = """
FROM {BUSYBOX}
ARG MSG=default
RUN mkdir -p /www && echo "$MSG" > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

SERVES_MSG_TEST = """
import os

def test_serves_my_msg(dockapp):
    assert dockapp.get("/").text == os.environ["MSG"] + "\\n"
"""


# Serves the files a COPY put in /www: edits to the context are visible in the answer.
def www_dockerfile(copy: str, base: str = "{BUSYBOX}", extra: str = "") -> str:
    return f"""
    FROM {base}
    RUN mkdir -p /www
    {copy}
    {extra}
    EXPOSE 80
    CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
    """


SERVES_TEST = """
import os

def test_serves(dockapp):
    assert dockapp.get("/" + os.environ.get("PAGE", "index.html")).text == os.environ["WANT"]
"""


def run_serving(pytester: pytest.Pytester, want: str, *args: str, page: str = "index.html") -> pytest.RunResult:
    """A pytest run whose one test asserts that the app serves ``want`` at ``page``."""
    pytester.makepyfile(test_serves=SERVES_TEST)
    os.environ["WANT"], os.environ["PAGE"] = want, page
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    finally:
        del os.environ["WANT"], os.environ["PAGE"]
    result.assert_outcomes(passed=1)
    return result


def assert_edit_is_served(pytester: pytest.Pytester, edit: Any, before: str, after: str, *args: str) -> None:
    """Run, edit an input of the build, run again: the second run must build and serve the edit."""
    run_serving(pytester, before, *args)
    time.sleep(0.01)  # an edit in the same mtime tick must still count: the content is hashed too
    edit()
    result = run_serving(pytester, after, *args)
    result.stdout.fnmatch_lines(["built pytest-dockapp/*"])
    result.stdout.no_fnmatch_line("reused pytest-dockapp/*")


# 1. Build args select the image -----------------------------------------------------------------


def test_factory_build_args_each_get_their_own_image(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(MSG_DOCKERFILE)
    pytester.makepyfile(
        """
        def test_a_b_a(dockapp_factory):
            for msg in ["a", "b", "a"]:
                assert dockapp_factory(build_args={"MSG": msg}).get("/").text == msg + "\\n"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_cache_check_warm_builds_of_other_args_do_not_share_a_tag(app: App, pytester: pytest.Pytester) -> None:
    from pytest_dockapp.cache.check import warm_tag

    base = warm_tag(Path("/ctx"), Path("/ctx/Dockerfile"), None, {"MSG": "a"}, "classic")
    assert base != warm_tag(Path("/ctx"), Path("/ctx/Dockerfile"), None, {"MSG": "b"}, "classic")
    assert base != warm_tag(Path("/ctx"), Path("/ctx/Dockerfile"), None, {"MSG": "a"}, "buildkit")


@pytest.mark.parametrize("sessions", [2, 4])
def test_concurrent_sessions_with_different_args_each_serve_their_own(
    app: App, pytester: pytest.Pytester, builder_args: list[str], sessions: int
) -> None:
    app.dockerfile(MSG_DOCKERFILE)
    pytester.makepyfile(test_msg=SERVES_MSG_TEST)
    msgs = [f"m{n}-{uuid.uuid4().hex[:6]}" for n in range(sessions)]
    procs = [
        subprocess.Popen(
            pytest_cmd("test_msg.py", f"--dockapp-build-arg=MSG={msg}", *builder_args),
            cwd=pytester.path,
            env={**os.environ, "MSG": msg},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for msg in msgs
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
        assert "1 passed" in out


def test_tag_names_the_whole_spec_and_never_a_secret() -> None:
    from pytest_dockapp.builds.image import default_tag

    ctx, df = Path("/ctx"), Path("/ctx/Dockerfile")
    tags = {
        default_tag(ctx, df, None, {}, "classic"),
        default_tag(ctx, df, None, {"MSG": "a"}, "classic"),
        default_tag(ctx, df, None, {"MSG": "b"}, "classic"),
        default_tag(ctx, df, None, {"MSG": "a"}, "buildkit"),
        default_tag(ctx, df, "dev", {"MSG": "a"}, "classic"),
        default_tag(ctx, Path("/ctx/Dockerfile.dev"), None, {}, "classic"),
    }
    assert len(tags) == 6
    secret = default_tag(ctx, df, None, {"API_TOKEN": "tok-123456"}, "classic")
    assert "tok-123456" not in secret
    assert secret != default_tag(ctx, df, None, {"API_TOKEN": "tok-654321"}, "classic")


def test_apps_start_from_the_image_id_not_the_tag(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        def test_id(dockapp, dockapp_image):
            assert dockapp_image.id.startswith("sha256:")
            assert dockapp.container.attrs["Image"] == dockapp_image.id
            assert dockapp.image == dockapp_image.id
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# 2. Build reuse serves nothing stale ------------------------------------------------------------


def test_reuse_sees_onbuild_copy_of_the_base_image(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    parent = f"dockapp-test/onbuild-parent:{uuid.uuid4().hex[:8]}"
    parent_dir = pytester.path.parent / f"{pytester.path.name}-parent"
    parent_dir.mkdir()
    (parent_dir / "Dockerfile").write_text(f"FROM {app.busybox}\nRUN mkdir -p /www\nONBUILD COPY index.html /www/\n")
    subprocess.run(["docker", "build", "-q", "-t", parent, str(parent_dir)], check=True, capture_output=True)
    try:
        app.dockerfile(www_dockerfile("", base=parent))
        index = pytester.path / "index.html"
        index.write_text("one\n")
        assert_edit_is_served(pytester, lambda: index.write_text("two\n"), "one\n", "two\n")
    finally:
        docker_client.api.remove_image(parent, force=True)


def test_reuse_sees_copy_sources_written_with_dotdot(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(www_dockerfile("COPY src/../index.html /www/"))
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "keep").write_text("")
    index = pytester.path / "index.html"
    index.write_text("one\n")
    assert_edit_is_served(pytester, lambda: index.write_text("two\n"), "one\n", "two\n")


def test_reuse_sees_the_target_of_a_symlinked_source(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(www_dockerfile("COPY index.html /www/"))
    (pytester.path / "real").mkdir()
    target = pytester.path / "real" / "page.html"
    target.write_text("one\n")
    (pytester.path / "index.html").symlink_to("real/page.html")
    assert_edit_is_served(pytester, lambda: target.write_text("two\n"), "one\n", "two\n")


def test_reuse_handles_file_names_that_are_not_utf8(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(www_dockerfile("COPY . /www/"))
    (pytester.path / "index.html").write_text("one\n")
    odd = os.path.join(os.fsencode(pytester.path), b"caf\xe9.txt")
    with open(odd, "wb") as fh:
        fh.write(b"latin-1 name\n")

    def edit() -> None:
        with open(odd, "ab") as fh:
            fh.write(b"more\n")
        (pytester.path / "index.html").write_text("two\n")

    assert_edit_is_served(pytester, edit, "one\n", "two\n")


def test_reuse_sees_a_dockerignore_edit(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(www_dockerfile("COPY . /www/"))
    (pytester.path / "index.html").write_text("one\n")
    (pytester.path / "page.txt").write_text("page\n")
    (pytester.path / ".dockerignore").write_text("page.txt\n*.py\n")
    run_serving(pytester, "one\n")
    (pytester.path / ".dockerignore").write_text("*.py\n")
    result = run_serving(pytester, "page\n", page="page.txt")
    result.stdout.fnmatch_lines(["built pytest-dockapp/*"])


def test_reuse_sees_a_dockerfile_specific_dockerignore_on_buildkit(
    app: App, pytester: pytest.Pytester, buildkit_cli: str
) -> None:
    args = ("--dockapp-builder=buildkit", f"--dockapp-docker-cli={buildkit_cli}")
    app.dockerfile(www_dockerfile("COPY . /www/"))
    (pytester.path / "index.html").write_text("one\n")
    (pytester.path / "page.txt").write_text("page\n")
    (pytester.path / "Dockerfile.dockerignore").write_text("page.txt\n*.py\n")
    run_serving(pytester, "one\n", *args)
    (pytester.path / "Dockerfile.dockerignore").write_text("*.py\n")
    result = run_serving(pytester, "page\n", *args, page="page.txt")
    result.stdout.fnmatch_lines(["built pytest-dockapp/*"])


def test_reuse_sees_a_bind_mounted_file_on_buildkit(app: App, pytester: pytest.Pytester, buildkit_cli: str) -> None:
    args = ("--dockapp-builder=buildkit", f"--dockapp-docker-cli={buildkit_cli}")
    app.dockerfile(www_dockerfile("RUN --mount=type=bind,source=msg.txt,target=/m cp /m /www/index.html"))
    msg = pytester.path / "msg.txt"
    msg.write_text("one\n")
    assert_edit_is_served(pytester, lambda: msg.write_text("two\n"), "one\n", "two\n", *args)


def test_reuse_sees_a_new_base_image(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    base = f"dockapp-test/moving-base:{uuid.uuid4().hex[:8]}"

    def make_base(text: str) -> None:
        d = pytester.path.parent / f"{pytester.path.name}-base"
        d.mkdir(exist_ok=True)
        (d / "Dockerfile").write_text(f"FROM {app.busybox}\nRUN mkdir -p /www && echo {text} > /www/index.html\n")
        subprocess.run(["docker", "build", "-q", "-t", base, str(d)], check=True, capture_output=True)

    make_base("one")
    try:
        app.dockerfile(www_dockerfile("", base=base))
        assert_edit_is_served(pytester, lambda: make_base("two"), "one\n", "two\n")
    finally:
        docker_client.api.remove_image(base, force=True)


def test_reuse_never_guesses_a_variable_source(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(www_dockerfile("ARG PAGE=index.html\nCOPY ${PAGE} /www/index.html"))
    index = pytester.path / "index.html"
    index.write_text("one\n")
    assert_edit_is_served(pytester, lambda: index.write_text("two\n"), "one\n", "two\n")


# 3. --dockapp-image reaches the factory, and the summary names it -------------------------------


def test_prebuilt_image_is_what_the_factory_runs(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    tag = f"dockapp-test/prebuilt:{uuid.uuid4().hex[:8]}"
    d = pytester.path / "prebuilt"
    d.mkdir()
    (d / "Dockerfile").write_text(
        f"FROM {app.busybox}\nRUN mkdir -p /www && echo prebuilt > /www/index.html\nEXPOSE 80\n"
        'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]\n'
    )
    subprocess.run(["docker", "build", "-q", "-t", tag, str(d)], check=True, capture_output=True)
    app.httpd()  # the project's own Dockerfile serves "hello": it must not be built
    pytester.makepyfile(
        """
        def test_session_and_factory_run_the_given_image(dockapp, dockapp_factory):
            assert dockapp.get("/").text == "prebuilt\\n"
            assert dockapp_factory().get("/").text == "prebuilt\\n"
        """
    )
    try:
        result = pytester.runpytest(f"--dockapp-image={tag}")
        result.assert_outcomes(passed=1)
        image_id = docker_client.api.inspect_image(tag)["Id"]
        result.stdout.fnmatch_lines([f"testing prebuilt image {tag} ({image_id[7:19]}): not built"])
        result.stdout.no_fnmatch_line("built pytest-dockapp/*")
    finally:
        docker_client.api.remove_image(tag, force=True)


# 4. A reused build keeps the record of the build that made it -----------------------------------


def test_reused_build_keeps_the_record_of_its_build(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        def test_record(dockapp_image):
            record = dockapp_image.record
            assert [s.text.split()[0] for s in record.steps] == ["FROM", "RUN", "EXPOSE", "CMD"]
            assert record.steps[1].line == 2 and record.steps[1].seconds > 0
            print("REUSED", record.reused, record.built_at > 0)
        """
    )
    first = pytester.runpytest("-s", "--dockapp-builder=classic")  # classic: a step for EXPOSE and CMD too
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*REUSED False True"])
    second = pytester.runpytest("-s", "--dockapp-builder=classic")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["*REUSED True True", "reused pytest-dockapp/*: nothing it is built from changed*"])
    second.stdout.fnmatch_lines(["*step record from that build at *"])


# 5. pytest-xdist loaded as -p xdist.plugin ------------------------------------------------------


def test_xdist_loaded_by_module_name_builds_once(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.httpd(extra=f"RUN echo {uuid.uuid4().hex} > /www/build-id")
    pytester.makepyfile(
        **{f"test_x{i}": "def test_a(dockapp):\n    assert dockapp.get('/').status_code == 200\n" for i in range(4)}
    )
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "xdist.plugin", "-p", "pytest_dockapp.plugin", "-n", "2")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert out.count("] built pytest-dockapp/") == 1, out
    assert out.count("- dockapp -") == 1, out


# 6. --dockapp-remove-images never removes an image another live session uses ----------------------

# Holds only the image (no container yet), then starts an app once the other session ended.
HOLD_THEN_START = (
    HOLD_TEST.replace("def test_hold(dockapp):", "def test_hold(dockapp_image):")
    + """

def test_start_after_the_other_session_ended(dockapp_factory):
    assert dockapp_factory().get("/").text == "hello\\n"
"""
)


def test_remove_images_spares_the_image_of_another_live_session(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra=f"RUN echo {uuid.uuid4().hex} > /www/build-id")
    holder = start_holder(pytester, "a", HOLD_THEN_START)
    try:
        pytester.makepyfile(test_home=HOME_TEST)
        other = pytester.runpytest_subprocess("test_home.py", "--dockapp-remove-images")
        other.assert_outcomes(passed=1)
        other.stdout.fnmatch_lines(["kept image pytest-dockapp/*: another live session uses it*"])
    finally:
        (pytester.path / "release-a").write_text("")
        out, _ = holder.communicate(timeout=120)
    assert holder.returncode == 0, out
    assert "2 passed" in out


def test_remove_images_says_what_it_removed(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd(extra=f"RUN echo {uuid.uuid4().hex} > /www/build-id")
    pytester.makepyfile(test_home=HOME_TEST)
    result = pytester.runpytest("--dockapp-remove-images")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["removed image pytest-dockapp/*"])
    tag = result.stdout.str().split("removed image ", 1)[1].split()[0]
    assert docker_client.api.images(name=tag) == []


# 7. builds.json: no lost entries, no litter -----------------------------------------------------


def _store_many(args: tuple[str, int]) -> None:
    from pytest_dockapp.builds.reuse import BuildCache, Entry

    path, worker = args
    cache = BuildCache(Path(path))
    for n in range(15):
        cache.store(f"{worker}-{n}", Entry("fp", "sha256:x", "t:1", {}))


def test_concurrent_sessions_lose_no_build_records(tmp_path: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "builds.json"
    with ProcessPoolExecutor(6) as pool:
        list(pool.map(_store_many, [(str(path), w) for w in range(6)]))
    assert len(json.loads(path.read_text())) == 90


def test_unwritable_cache_leaves_no_temporary_file(tmp_path: Path) -> None:
    from pytest_dockapp.builds.reuse import BuildCache, Entry

    path = tmp_path / "builds.json"
    path.mkdir()  # cannot be replaced by a file: the write fails, as on a read-only folder
    BuildCache(path).store("k", Entry("fp", "sha256:x", "t:1", {}))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
