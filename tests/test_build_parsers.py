"""Unit tests: folding builder output into per-step records (no engine needed)."""

from __future__ import annotations

import base64
import json

from pytest_dockapp.builds.dockerfile import Dockerfile
from pytest_dockapp.builds.output.classic import ClassicParser
from pytest_dockapp.builds.output.plain import PlainParser
from pytest_dockapp.builds.output.rawjson import RawJsonParser

DF = Dockerfile.parse(
    "FROM base AS deps\nWORKDIR /app\nCOPY req.txt .\nRUN pip install -r req.txt\n"
    'FROM base\nWORKDIR /app\nCOPY --from=deps /app /app\nCOPY . .\nCMD ["x"]\n'
)


def classic_stream(*lines: str) -> list[dict[str, str]]:
    return [{"stream": line + "\n"} for line in lines]


def test_classic_hits_misses_and_lines() -> None:
    p = ClassicParser(DF)
    for chunk in classic_stream(
        "Step 1/9 : FROM base AS deps",
        " ---> abc123abc123",
        "Step 2/9 : WORKDIR /app",
        " ---> Using cache",
        " ---> 111111111111",
        "Step 3/9 : COPY req.txt .",
        " ---> 222222222222",
        "Step 4/9 : RUN pip install -r req.txt",
        " ---> Running in 333333333333",
        "Using cached requests-2.0.whl",
        " ---> Using cache",
        "Installing",
        " ---> 444444444444",
        "Step 5/9 : LABEL org.pytest-dockapp.owner=pytest-dockapp",
        " ---> Running in 555555555555",
    ):
        p.feed(chunk)
    p.feed({"aux": {"ID": "sha256:feed"}})
    p.finish()
    steps = p.result()
    assert [(s.index, s.line, s.cached) for s in steps] == [(1, 1, None), (2, 2, True), (3, 3, False), (4, 4, False)]
    # pip's "Using cached ..." is step output, not the builder's cache line
    assert steps[3].output == ["Using cached requests-2.0.whl", " ---> Using cache", "Installing"]
    assert steps[0].stage == "deps"
    assert p.image_id == "sha256:feed"


def test_classic_error_marks_failed_step() -> None:
    p = ClassicParser(DF)
    for chunk in classic_stream("Step 1/9 : FROM base AS deps", "Step 2/9 : WORKDIR /app"):
        p.feed(chunk)
    p.feed({"error": "boom", "errorDetail": {"message": "boom"}})
    p.finish()
    assert p.error == "boom" and p.result()[-1].failed


PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#4 [deps 1/4] FROM dockapp-test/base
#4 DONE 0.0s
#5 [deps 2/4] WORKDIR /app
#5 CACHED
#6 [deps 3/4] COPY req.txt .
#6 CACHED
#7 [deps 4/4] RUN pip install -r req.txt
#7 0.512 Using cached requests-2.0.whl
#7 DONE 1.5s
#8 [stage-1 3/4] COPY --from=deps /app /app
#8 DONE 0.1s
#9 [stage-1 4/4] COPY . .
#9 DONE 0.0s
"""


def test_plain_hits_misses_dedup_and_lines() -> None:
    p = PlainParser(DF, None)
    for line in PLAIN.splitlines():
        p.feed(line)
    steps = {(s.stage, s.line): s for s in p.result()}
    assert steps[("deps", 2)].cached is True
    assert steps[("deps", 4)].cached is False and steps[("deps", 4)].seconds == 1.5
    assert steps[("deps", 4)].output == ["Using cached requests-2.0.whl"]
    # stage-1's WORKDIR shares deps' vertex digest: BuildKit reports it once
    assert steps[("stage-1", 6)].cached is None
    assert steps[("stage-1", 7)].cached is False
    assert [s.line for s in p.result()] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_failed_plain_step_marks_the_build_failed() -> None:
    p = PlainParser(DF, None)
    for line in ["#7 [deps 4/4] RUN pip install -r req.txt", "#7 ERROR: process returned 1"]:
        p.feed(line)
    assert p.error and p.by_key["7"].failed


def test_rawjson_folds_by_digest_last_wins() -> None:
    p = RawJsonParser(DF, "deps")

    def status(**kw: object) -> str:
        return json.dumps(kw)

    p.feed(status(vertexes=[{"digest": "d1", "name": "[deps 3/4] COPY req.txt ."}]))
    p.feed(
        status(
            vertexes=[
                {
                    "digest": "d1",
                    "name": "[deps 3/4] COPY req.txt .",
                    "cached": True,
                    "started": "2026-01-01T00:00:00.000000001Z",
                    "completed": "2026-01-01T00:00:00.5Z",
                }
            ]
        )
    )
    p.feed(
        status(
            vertexes=[
                {"digest": "d2", "name": "[deps 4/4] RUN pip install -r req.txt", "started": "2026-01-01T00:00:01Z"}
            ]
        )
    )
    p.feed(status(logs=[{"vertex": "d2", "data": base64.b64encode(b"Using cached x\n").decode()}]))
    p.feed(
        status(
            vertexes=[
                {
                    "digest": "d2",
                    "name": "[deps 4/4] RUN pip install -r req.txt",
                    "started": "2026-01-01T00:00:01Z",
                    "completed": "2026-01-01T00:00:03Z",
                }
            ]
        )
    )
    steps = {s.line: s for s in p.result()}
    assert steps[3].cached is True
    assert steps[4].cached is False and steps[4].seconds == 2.0
    assert steps[4].output == ["Using cached x"]
    assert 5 not in steps  # the final stage is not needed for target deps


# Recorded from `DOCKER_BUILDKIT=1 docker build --progress=plain` (CLI 20.10) on this Dockerfile.
DERIVED = Dockerfile.parse(
    "FROM busybox AS base\nWORKDIR /app\nCOPY a.txt /app/\nRUN cat a.txt > /b1\n"
    "FROM base AS child\nCOPY b.txt /app/\nRUN cat b.txt > /b2\n"
    + "".join(f"RUN echo {n}\n" for n in range(1, 9))
    + "FROM base\nCOPY --from=child /b2 /b2\nRUN echo final\n"
)
DERIVED_PLAIN = (
    """\
#4 [base 1/4] FROM docker.io/dockapp-test/busybox:1
#4 CACHED
#5 [base 2/4] WORKDIR /app
#5 CACHED
#7 [base 3/4] COPY a.txt /app/
#7 DONE 0.0s
#8 [base 4/4] RUN cat a.txt > /b1
#8 DONE 0.2s
#9 [child  1/10] COPY b.txt /app/
#9 DONE 0.0s
#10 [child  2/10] RUN cat b.txt > /b2
#10 DONE 0.2s
"""
    + "".join(f"#{n + 11} [child {n + 3:2d}/10] RUN echo {n + 1}\n#{n + 11} CACHED\n" for n in range(8))
    + """\
#19 [stage-2 1/2] COPY --from=child /b2 /b2
#19 DONE 0.0s
#20 [stage-2 2/2] RUN echo final
#20 DONE 0.2s
"""
)


def test_buildkit_maps_derived_stages_and_padded_positions_to_their_lines() -> None:
    p = PlainParser(DERIVED)
    for line in DERIVED_PLAIN.splitlines():
        p.feed(line)
    steps = {s.line: s.cached for s in p.result()}
    # Every numbered vertex lands on its own line: none "(dedup)", nothing shifted by the missing FROM.
    want = {1: None, 2: True, 3: False, 4: False, 6: False, 7: False}
    want |= {line: True for line in range(8, 16)}
    want |= {17: False, 18: False}  # a stage built FROM a stage has no FROM vertex
    assert steps == want


def test_rawjson_reads_padded_positions() -> None:
    vertex = {"digest": "sha256:1", "name": "[child  1/10] COPY b.txt /app/", "cached": True}
    p = RawJsonParser(DERIVED)
    p.feed(json.dumps({"vertexes": [vertex]}))
    assert [(s.line, s.cached) for s in p.result() if s.cached is not None] == [(6, True)]


def test_buildkit_onbuild_triggers_are_steps_of_the_child() -> None:
    df = Dockerfile.parse("FROM parent:1\nWORKDIR /w\nRUN echo child\n").with_triggers(
        {"parent:1": ["COPY . /app/", "RUN cat /app/a.txt > /x"]}
    )
    p = PlainParser(df)
    for line in [
        "#4 [1/3] FROM docker.io/library/parent:1",
        "#6 [2/3] COPY . /app/",
        "#6 DONE 0.0s",
        "#7 [3/3] RUN cat /app/a.txt > /x",
        "#7 DONE 0.2s",
        "#8 [4/3] WORKDIR /w",
        "#8 CACHED",
        "#9 [5/3] RUN echo child",
        "#9 DONE 0.2s",
    ]:
        p.feed(line)
    assert [(s.text, s.instruction.trigger if s.instruction else None, s.cached) for s in p.result()] == [
        ("FROM docker.io/library/parent:1", 0, None),
        ("COPY . /app/", 1, False),
        ("RUN cat /app/a.txt > /x", 2, False),
        ("WORKDIR /w", 0, True),
        ("RUN echo child", 0, False),
    ]


def test_classic_onbuild_triggers_run_inside_the_from_step() -> None:
    df = Dockerfile.parse("FROM parent:1\nWORKDIR /w\n").with_triggers({"parent:1": ["COPY . /app/", "RUN x"]})
    p = ClassicParser(df)
    for chunk in classic_stream(
        "Step 1/2 : FROM parent:1",
        "# Executing 2 build triggers",
        " ---> Using cache",
        " ---> Running in 4a12f96bc7db",
        "Removing intermediate container 4a12f96bc7db",
        " ---> 0a57b562d70b",
        "Step 2/2 : WORKDIR /w",
        " ---> Running in a9fc0bb844e0",
    ):
        p.feed(chunk)
    p.finish()
    assert [(s.index, s.text, s.cached) for s in p.result()] == [
        (1, "FROM parent:1", None),
        (2, "COPY . /app/", True),
        (3, "RUN x", False),
        (4, "WORKDIR /w", False),
    ]


# Recorded from podman 4.3.1 (`podman build --layers`) here: a rebuild after `src.txt` changed.
# Through the Docker-compatible API the same text arrives as the stream's "stream" parts.
PODMAN_DF = Dockerfile.parse(
    "FROM dockapp-test/busybox:1 AS deps\nWORKDIR /app\nCOPY req.txt .\nRUN cat req.txt > /r\n"
    'FROM dockapp-test/busybox:1\nWORKDIR /app\nCOPY --from=deps /r /r\nCOPY . .\nCMD ["x"]\n'
)
PODMAN_REBUILD = """\
[1/2] STEP 1/4: FROM dockapp-test/busybox:1 AS deps
[1/2] STEP 2/4: WORKDIR /app
--> Using cache 57a991748a6b1e5bc2e964946a6994d6f377cb047a416ca754dccd1606868a35
--> 57a991748a6
[1/2] STEP 3/4: COPY req.txt .
--> Using cache d232f7529060ba4bdb3b604bc7c5ea1344ae88d73e2523f8e292c2c3412ae520
--> d232f752906
[1/2] STEP 4/4: RUN cat req.txt > /r
--> Using cache 02e98fbe4460c658d418d8965462d2f6923b3a755d0fbb4a4e1f1a4184b98e75
--> 02e98fbe446
[2/2] STEP 1/5: FROM dockapp-test/busybox:1
[2/2] STEP 2/5: WORKDIR /app
--> Using cache 57a991748a6b1e5bc2e964946a6994d6f377cb047a416ca754dccd1606868a35
--> 57a991748a6
[2/2] STEP 3/5: COPY --from=deps /r /r
--> Using cache 5fdd8963e901439fe1957c55494d2260ea3fa54d5342476cf2a853bd3dac9d5a
--> 5fdd8963e90
[2/2] STEP 4/5: COPY . .
--> 57a5446c74a
[2/2] STEP 5/5: CMD ["x"]
[2/2] COMMIT podprobe:1
--> 6a4d53ea76f
Successfully tagged localhost/podprobe:1
6a4d53ea76ffd697e9c3bd9a0d49d296efb49356010fbbeeaab68c1714243a89
"""
# Recorded likewise: a single-stage cached rebuild has no "[i/n]" stage prefix.
PODMAN_SINGLE = """\
STEP 1/2: FROM dockapp-test/busybox:1
STEP 2/2: RUN echo made > /m
--> Using cache 02f2e8d443844679aaea7171603486acd95570d663e139028425c3cba2644d60
COMMIT podprobe:2
--> 02f2e8d4438
Successfully tagged localhost/podprobe:2
02f2e8d443844679aaea7171603486acd95570d663e139028425c3cba2644d60
"""


def test_podman_steps_and_cache_lines_are_read() -> None:
    p = ClassicParser(PODMAN_DF)
    for chunk in classic_stream(*PODMAN_REBUILD.splitlines()):
        p.feed(chunk)
    p.finish()
    assert [(s.line, s.cached) for s in p.result()] == [
        (1, None),
        (2, True),
        (3, True),
        (4, True),
        (5, None),
        (6, True),
        (7, True),
        (8, False),
        (9, False),
    ]
    assert all(s.output == [] for s in p.result())  # ids, COMMIT and tags are the builder's, not step output


def test_podman_single_stage_has_no_stage_prefix() -> None:
    p = ClassicParser(Dockerfile.parse("FROM dockapp-test/busybox:1\nRUN echo made > /m\n"))
    for chunk in classic_stream(*PODMAN_SINGLE.splitlines()):
        p.feed(chunk)
    p.finish()
    assert [(s.line, s.cached) for s in p.result()] == [(1, None), (2, True)]


def test_a_fully_cached_build_passes_and_a_miss_names_its_step() -> None:
    from pathlib import Path

    import pytest

    from pytest_dockapp.builds.record import BuildRecord, BuildStep
    from pytest_dockapp.core.errors import CacheRegressionError

    df = Dockerfile.parse("FROM base\nRUN a\nRUN b\n")
    steps = [BuildStep(i + 1, ins.text, ins, "stage-0", None if i == 0 else True) for i, ins in enumerate(df.steps())]
    record = BuildRecord("sha256:1", "t:1", "classic", steps, 1.0, Path("/ctx"), Path("/ctx/Dockerfile"))
    record.assert_fully_cached()
    steps[2].cached = False
    with pytest.raises(CacheRegressionError, match=r"missed the layer cache at 1 step\(s\)") as info:
        record.assert_fully_cached()
    assert "RUN b" in str(info.value) and "<-- MISS" in str(info.value)
    record.reused = True  # nothing was rebuilt: nothing can have missed
    record.assert_fully_cached()
