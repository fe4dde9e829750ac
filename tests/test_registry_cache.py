"""CI across runners (issue 23): a real registry (``.ci/registry``) as the layer cache between
this engine (runner A, which builds and pushes) and the second engine (runner B, which never
built the image); prebuilt images pulled from it; and a miss across runners explained by the
input that differs."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from pathlib import Path

import pytest

from pytest_dockapp.builds.inputs import Inputs
from pytest_dockapp.builds.registry import registry_of, split_ref

from .helpers import App, ci_engine

PROJECT = """
FROM {BUSYBOX}
ARG GREETING=hello
RUN mkdir -p /www && echo "$GREETING {RUN}" > /www/greeting
COPY src/ /www/
RUN ls /www > /www/list.txt
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

TEST = """
def test_serves(dockapp):
    assert dockapp.get("/index.html").text == "hello\\n"
"""

CACHED = re.compile(r"^built \S+ \((\w+)\) in [\d.]+s, (\d+)/(\d+) steps cached \((\d+) from (\S+)\)$", re.M)


@pytest.fixture(scope="session")
def registry() -> str:
    """The registry both engines reach at one loopback address (``.ci/registry start`` and
    ``.ci/registry forward``)."""
    return ci_engine("DOCKAPP_TEST_REGISTRY", "a registry", ".ci/registry start && .ci/registry forward")


def _project(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(PROJECT.replace("{RUN}", uuid.uuid4().hex))  # no other run's layers match
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "index.html").write_text("hello\n")
    (pytester.path / "src" / "index.html").chmod(0o644)
    pytester.makepyfile(TEST)


def _runner_b(monkeypatch: pytest.MonkeyPatch, remote_host: str) -> None:
    monkeypatch.setenv("DOCKER_HOST", remote_host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)


def _miss(pytester: pytest.Pytester, args: list[str], line: str) -> pytest.RunResult:
    result = pytester.runpytest(*args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*what differs from the build that made the cache image:", line])
    return result


@pytest.mark.local_engine("runner A is this engine")
def test_a_cold_runner_builds_from_the_registry_cache_and_each_miss_names_its_cause(
    app: App,
    pytester: pytest.Pytester,
    builder_args: list[str],
    registry: str,
    remote_host: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builder = "classic" if "classic" in builder_args else "buildkit"
    ref = f"{registry}/dockapp-test/{uuid.uuid4().hex[:12]}/app:{builder}"
    _project(app, pytester)

    # Runner A builds and pushes the image with its inline cache and its inputs.
    result = pytester.runpytest(*builder_args, f"--dockapp-cache-to={ref}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"  registry: pushed to {ref}@sha256:*; pulls and pushes added *s"])
    digest = re.search(r"@(sha256:[0-9a-f]{64});", result.stdout.str())
    assert digest

    # Runner B never built it: every cacheable step comes from the registry.
    _runner_b(monkeypatch, remote_host)
    b_args = [*builder_args, f"--dockapp-cache-from={ref}", "--dockapp-expect-cached"]
    result = pytester.runpytest(*b_args)
    result.assert_outcomes(passed=1)
    found = CACHED.search(result.stdout.str())
    assert found, result.stdout.str()
    assert found.group(1) == builder and found.group(5) == ref
    hits, steps, from_registry = int(found.group(2)), int(found.group(3)), int(found.group(4))
    assert hits == steps >= 3 and from_registry >= 3, found.group(0)

    # The CI shape "build once, push, test in N jobs": runner B tests the pushed image itself,
    # pinned by its digest.
    pinned = f"{ref.rsplit(':', 1)[0]}@{digest.group(1)}"
    result = pytester.runpytest(f"--dockapp-image={pinned}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"testing prebuilt image {pinned} (*): not built, pulled in *s"])

    index = pytester.path / "src" / "index.html"
    index.chmod(0o664)
    _miss(pytester, b_args, "  src/index.html: mode 0664 here, 0644 in the cache image (umask differs between runners*")
    index.chmod(0o644)
    other = "classic" if builder == "buildkit" else "buildkit"
    _miss(
        pytester,
        [f"--dockapp-builder={other}", *b_args[len(builder_args) :]],
        f"  builder {other} here, {builder} made the cache*",
    )
    if builder == "classic":
        _miss(
            pytester,
            [*b_args, "--dockapp-build-arg=GREETING=hi"],
            "  build arg GREETING: value sha256:* here, not passed (the Dockerfile's default) in the cache",
        )
    else:
        index.write_text("hello\n\n")
        result = _miss(
            pytester,
            b_args,
            "  src/index.html: content differs (7 bytes, sha256:* here; 6 bytes, sha256:* in the cache)",
        )
        result.stdout.fnmatch_lines(["*DOCKER_BUILDKIT=1 * build * --cache-from " + ref + " *"])


def test_the_inputs_that_differ_are_named_one_per_line() -> None:
    here = Inputs(
        "classic",
        {"a.js": [0o664, 3, "aa"], "b.sh": [0o644, 2, "bb"], "c.txt": [0o644, 2, "cc"], "new": [0o644, 1, "n"]},
        {"VERSION": "1" * 64},
        {"python:3.12-slim": "sha256:" + "a" * 64},
    )
    cache = Inputs(
        "buildkit",
        {"a.js": [0o644, 3, "aa"], "b.sh": [0o755, 2, "bb"], "c.txt": [0o644, 3, "cd"], "gone": [0o644, 1, "g"]},
        {"VERSION": "2" * 64, "EXTRA": "3" * 64},
        {"python:3.12-slim": "sha256:" + "c" * 64},
    )
    assert cache.decode(cache.encode()) == cache
    assert here.diff(cache) == [
        "builder classic here, buildkit made the cache (neither builder reads the other's cache: build with the same "
        "one on both runners)",
        "base image python:3.12-slim: sha256:aaaaaaaaaaaa… here, sha256:cccccccccccc… in the cache",
        "build arg EXTRA: not passed (the Dockerfile's default) here, value sha256:333333333333… in the cache",
        "build arg VERSION: value sha256:111111111111… here, value sha256:222222222222… in the cache",
        "a.js: mode 0664 here, 0644 in the cache image (umask differs between runners: set one umask before the "
        "checkout, or COPY --chmod)",
        "b.sh: mode 0644 here, 0755 in the cache image (the executable bit differs: a chmod, or a checkout that does "
        "not keep it (git core.fileMode))",
        "c.txt: content differs (2 bytes, sha256:cc… here; 3 bytes, sha256:cd… in the cache)",
        "gone: in the cache's context, not in this one",
        "new: in this context, not in the cache's",
    ]
    assert Inputs.decode("not base64 at all") is None


def test_a_secret_looking_build_args_value_is_not_in_the_inputs_label_even_hashed(tmp_path: Path) -> None:
    """The label goes to a registry: an unsalted hash of a short token can be searched for."""
    import hashlib
    from unittest import mock

    from pytest_dockapp.builds.dockerfile import Dockerfile

    (tmp_path / "Dockerfile").write_text("FROM scratch\nARG NPM_TOKEN\nARG VERSION\n")
    client = mock.Mock()
    inputs = Inputs.collect(
        client,
        tmp_path,
        tmp_path / "Dockerfile",
        Dockerfile.read(tmp_path / "Dockerfile"),
        {"NPM_TOKEN": "abc123", "VERSION": "1"},
        "classic",
    )
    label = inputs.encode()
    assert "abc123" not in label and hashlib.sha256(b"abc123").hexdigest() not in json.dumps(inputs.args)
    assert inputs.args["VERSION"] == hashlib.sha256(b"1").hexdigest()
    other = Inputs("classic", args={"VERSION": inputs.args["VERSION"]})
    assert inputs.diff(other) == [
        "build arg NPM_TOKEN: passed (a secret: its value is not recorded) here, not passed (the Dockerfile's "
        "default) in the cache"
    ]


@pytest.mark.parametrize(
    ("ref", "registry", "repo", "tag"),
    [
        ("127.0.0.1:5000/app/cache:main", "127.0.0.1:5000", "127.0.0.1:5000/app/cache", "main"),
        ("localhost:5000/app", "localhost:5000", "localhost:5000/app", None),
        ("team/app:1", "Docker Hub", "team/app", "1"),
        ("r.example/app@sha256:" + "0" * 64, "r.example", "r.example/app", "sha256:" + "0" * 64),
        ("r.example:5000/app:v1@sha256:" + "0" * 64, "r.example:5000", "r.example:5000/app", "sha256:" + "0" * 64),
    ],
)
def test_a_ref_is_split_as_the_engine_reads_it(ref: str, registry: str, repo: str, tag: str | None) -> None:
    assert registry_of(ref) == registry
    assert split_ref(ref) == (repo, tag)


def test_the_cache_refs_come_from_the_ci_environment_under_the_command_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dockapp.options import resolve

    pytester.makeini("[pytest]\ndockapp_cache_from = ini/a:1\ndockapp_cache_to = ini/b:1\n")
    monkeypatch.setenv("DOCKAPP_CACHE_FROM", "env/a:1, env/c:1")
    monkeypatch.setenv("DOCKAPP_CACHE_TO", "env/b:1")
    settings = resolve(pytester.parseconfigure())
    assert (settings.cache_from, settings.cache_to) == (["env/a:1", "env/c:1"], "env/b:1")
    settings = resolve(pytester.parseconfigure("--dockapp-cache-to=cli/b:1"))
    assert settings.cache_to == "cli/b:1"


@pytest.mark.local_engine("the registry is on this engine's loopback")
def test_a_missing_cache_ref_is_a_cold_build_and_an_unreachable_or_refused_registry_one_error(
    app: App, pytester: pytest.Pytester, registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(app, pytester)
    result = pytester.runpytest(f"--dockapp-cache-from={registry}/dockapp-test/never-pushed/app:main")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["dockapp: cache image */never-pushed/app:main is not in the registry yet: a cold build*"]
    )

    result = pytester.runpytest(f"--dockapp-image={registry}/dockapp-test/never-pushed/app:main")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"image '{registry}/dockapp-test/never-pushed/app:main' is not on the engine, and its pull failed: *"
            f"{registry} has no such image"
        ]
    )

    # --dockapp-rebuild: an image reused unchanged needs no registry, and is not an error.
    result = pytester.runpytest("--dockapp-cache-from=127.0.0.1:9/app:main", "--dockapp-rebuild")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cache image 127.0.0.1:9/app:main: the engine could not reach 127.0.0.1:9"])

    # The registry behind a login (.ci/registry: 5001 wants user dockapp): no credentials, wrong
    # ones, then the right ones from a credential helper named by the docker config.
    locked = registry.rsplit(":", 1)[0] + ":5001"
    ref = f"{locked}/dockapp-test/{uuid.uuid4().hex[:12]}/app:main"
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    result = pytester.runpytest(f"--dockapp-cache-to={ref}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*push to {ref}: {locked} wants a login, and the docker config has no credentials*"])

    wrong = base64.b64encode(b"dockapp:wrong-password").decode()
    (config / "config.json").write_text(json.dumps({"auths": {locked: {"auth": wrong}}}))
    result = pytester.runpytest(f"--dockapp-cache-from={ref}", "--dockapp-rebuild")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*cache image {ref}: {locked} refused the credentials", f"hint: log in to {locked}*"])

    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-dockapptest"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'echo \'{"ServerURL": "\'$server\'", "Username": "dockapp", "Secret": "dockapp-test-password"}\'\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helpers}:{os.environ['PATH']}")
    (config / "config.json").write_text(json.dumps({"credHelpers": {locked: "dockapptest"}}))
    result = pytester.runpytest(f"--dockapp-cache-to={ref}", "--dockapp-builder=classic")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"  registry: pushed to {ref}@sha256:*"])
    assert "dockapp-test-password" not in result.stdout.str()


@pytest.mark.local_engine("the registry is on this engine's loopback")
def test_one_cache_ref_takes_the_sessions_first_image_and_another_is_built_without_it(
    registry: str, busybox: str, tmp_path: Path
) -> None:
    """Two images pushed to one cache ref would replace each other (two compose builds, say)."""
    from pytest_dockapp import AppManager, BuildPolicy, BuildSpec, RegistryCache, SessionOptions

    ref = f"{registry}/dockapp-test/{uuid.uuid4().hex[:12]}/app:main"
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"FROM {busybox}\nRUN echo {name} {uuid.uuid4().hex}\n")
    notices: list[str] = []
    cache = RegistryCache(cache_to=ref)
    options = SessionOptions("classic", sweep_age=None, builds=BuildPolicy(registry=cache))
    with AppManager.connect(options, on_notice=notices.append) as apps:
        first = apps.image(BuildSpec(tmp_path / "one"))
        second = apps.image(BuildSpec(tmp_path / "two"))
    assert first.record is not None and first.record.pushed_to.startswith(f"{ref}@sha256:")
    assert second.record is not None and second.record.pushed_to == ""
    assert notices == [
        f"{tmp_path / 'two' / 'Dockerfile'} is built without dockapp_cache_from/_to: those refs hold the session's "
        "first image, and one cache ref holds one image"
    ]


@pytest.mark.local_engine("the registry is on this engine's loopback")
def test_a_read_only_registry_is_said_to_refuse_the_push_and_no_tag_is_left(
    app: App, pytester: pytest.Pytester, registry: str, docker_client: object
) -> None:
    _project(app, pytester)
    read_only = registry.rsplit(":", 1)[0] + ":5002"  # .ci/registry: distribution in maintenance mode
    ref = f"{read_only}/dockapp-test/{uuid.uuid4().hex[:12]}/app:main"
    result = pytester.runpytest(f"--dockapp-cache-to={ref}", "--dockapp-builder=classic")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"*push to {ref}: {read_only} refused the push (HTTP 405 Method not allowed)*",
            f"hint: {read_only} is read-only*",
        ]
    )
    assert "could not reach" not in result.stdout.str()
    tags = [t for i in docker_client.api.images() for t in i.get("RepoTags") or []]  # type: ignore[attr-defined]
    assert not [t for t in tags if t.startswith(read_only)], tags


def test_a_compose_services_own_cache_refs_push_and_feed_its_build(
    app: App, pytester: pytest.Pytester, registry: str
) -> None:
    """``build.cache_to`` pushes that service's image with its inline cache, through the same
    registry cache as ``--dockapp-cache-to``; a rebuild that names it in ``cache_from`` is cached."""
    ref = f"{registry}/dockapp-test/{uuid.uuid4().hex[:12]}/worker:main"
    _project(app, pytester)
    compose = (
        f"services:\n  web:\n    build: {{context: ., cache_from: [{ref}], cache_to: ['type=registry,ref={ref}']}}\n"
    )
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    result = pytester.runpytest("--dockapp-builder=buildkit")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*registry: pushed to {ref}@sha256:*"])
    result = pytester.runpytest("--dockapp-builder=buildkit", "--dockapp-rebuild", "--dockapp-expect-cached")
    result.assert_outcomes(passed=1)
