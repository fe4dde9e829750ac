"""Why a build failed, and what in the Dockerfile the builder in use may not support."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_dockapp.builds.dockerfile import Dockerfile
from pytest_dockapp.builds.record import BuildRecord
from pytest_dockapp.core.errors import BaseImageUnavailableError, BuildError, tail
from pytest_dockapp.engine.client import Builder

if TYPE_CHECKING:
    import docker


def feature_needs(df: Dockerfile, builder: str) -> list[str]:
    """What in ``df`` the builder in use may not support: one sentence per feature."""
    uses: list[tuple[str, bool]] = []
    steps = df.steps()
    uses.append(("heredocs (`<<EOF`)", any(i.heredocs for i in steps)))
    uses.append(("`COPY --link`", any("link" in i.flags for i in steps)))
    uses.append(("`COPY --chmod`", any("chmod" in i.flags for i in steps)))
    uses.append(("`RUN --mount`", any(i.keyword == "RUN" and "mount" in i.flags for i in steps)))
    platform_args = ("BUILDPLATFORM", "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "BUILDOS", "BUILDARCH")
    uses.append(
        ("automatic platform args (`$BUILDPLATFORM`, ...)", any(a in i.value for i in steps for a in platform_args))
    )
    used = [name for name, on in uses if on]
    if builder == "classic":
        return [
            f"this Dockerfile uses {name}, which needs BuildKit (builder in use: classic): run with "
            "--dockapp-builder buildkit"
            for name in used
        ]
    out = []
    if df.syntax:
        out.append(
            f"the `# syntax={df.syntax}` line makes BuildKit load that frontend image, which must be on "
            "the engine or pullable: load it, or remove the line to use the engine's built-in frontend"
        )
    newer = [n for n in used if n in ("heredocs (`<<EOF`)", "`COPY --link`")]
    out += [
        f"this Dockerfile uses {name}, which needs Dockerfile frontend 1.4+ (builder in use: BuildKit, whose "
        "built-in frontend on engines before 23.0 is older): use a newer engine, or a `# syntax=` frontend "
        "image that is on the engine"
        for name in newer
    ]
    return out


def _from_variables(base: str) -> list[str]:
    """The variables a FROM's image is spelled with (``${BASE_IMAGE}`` gives ``BASE_IMAGE``)."""
    return [m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(\w+)", base)]


def build_failure(
    client: docker.DockerClient,
    df: Dockerfile,
    record: BuildRecord,
    error: str,
    args: Mapping[str, str],
    builder: Builder,
) -> BuildError:
    import docker.errors

    missing = []
    for stage, image in df.base_images(args):
        try:
            client.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            missing.append((stage, image))
        except docker.errors.APIError:
            pass
    failed = next((s for s in record.steps if s.failed), None)
    if missing and (failed is None or failed.keyword == "FROM"):
        stage, image = missing[0]
        passed = [name for name in _from_variables(stage.base) if name in args]
        if passed:
            # The user already chose the base through a build arg: telling them to pass one is no help.
            hint = (
                f"the build arg {passed[0]}={args[passed[0]]} names an image this engine does not have: "
                "build or load it there (docker build / docker load / docker import), or pass another local image"
            )
        else:
            hint = (
                "build or load the base locally (docker build / docker load / docker import), "
                "or make the Dockerfile take `ARG BASE_IMAGE=...` before `FROM ${BASE_IMAGE}` and pass "
                "--dockapp-build-arg BASE_IMAGE=<a local image>"
            )
        return BaseImageUnavailableError(
            f"base image {image!r} (FROM at {df.path}:{stage.line}) is not on the engine and could not be pulled",
            evidence=tail(record.log, 8),
            evidence_title="build output",
            hint=hint,
        )
    step = failed or (record.steps[-1] if record.steps else None)
    if step is not None:
        where = f"{df.path}:{step.line}" if step.line else str(df.path)
        what = f"build failed at step {step.index} ({where}): {step.text}\n{error}"
        evidence = tail(step.output or record.log, 20)
    else:
        what = f"build of {record.context} failed: {error}"
        evidence = tail(record.log, 20)
    needs = feature_needs(df, builder.name)
    return BuildError(
        what,
        evidence=evidence,
        evidence_title="step output",
        hint="; ".join(needs)
        if needs
        else "fix the failing instruction; rerun with -s to see the whole build log live",
    )
