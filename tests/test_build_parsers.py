"""Unit tests: folding builder output into per-step records (no engine needed)."""

from __future__ import annotations

import base64
import json

from pytest_dockapp.build import ClassicParser, PlainParser, RawJsonParser
from pytest_dockapp.dockerfile import Dockerfile

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


def test_plain_error() -> None:
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
