"""Where an image's files came from: the Dockerfile's ``COPY`` and ``ADD`` lines map a path in
the image back to the repository's file, the map a coverage report of the app's own code needs.

>>> PathMap.of(record).to_repo("/app/server.js")
PosixPath('/repo/example-app/server.js')
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_dockapp.builds.dockerfile import Dockerfile, copy_sources, expand, normalize_source, split_words


@dataclass(frozen=True)
class PathMap:
    """The context's sources of the target stage's copies, in order (a later copy wins)."""

    context: Path
    copies: tuple[tuple[str, str], ...]  # (the path in the image, the source relative to the context)

    @classmethod
    def read(
        cls, dockerfile: Path, context: Path, target: str | None = None, build_args: Mapping[str, str] | None = None
    ) -> PathMap:
        """The map of ``dockerfile``'s ``target`` stage (the last one by default). Sources with
        globs, copies from other stages and remote URLs are left out: no file of the context
        stands behind them as it is."""
        df = Dockerfile.read(dockerfile)
        stage = df.target_stage(target)
        scopes = df.scopes(build_args)
        copies: list[tuple[str, str]] = []
        folders = {"/"}  # known to be folders in the image: every WORKDIR made one
        for ins in stage.instructions:
            scope = scopes[ins.key]
            folders.add(scope.workdir)
            sources = copy_sources(ins)
            if not sources:
                continue
            dest_word = expand(split_words(ins.args)[-1], scope.variables)
            dest = posixpath.normpath(posixpath.join(scope.workdir, dest_word))
            # as the builder decides: a destination ending in "/" (or ".") or an existing folder
            into_folder = dest_word.endswith(("/", ".")) or len(sources) > 1 or dest in folders
            for source in sources:
                src = normalize_source(expand(source, scope.variables))
                if src is None or any(ch in src for ch in "*?["):
                    continue
                if (context / src).is_dir():
                    copies.append((dest, src))
                else:
                    copies.append((posixpath.join(dest, posixpath.basename(src)) if into_folder else dest, src))
        return cls(context, tuple(copies))

    def to_repo(self, path: str) -> Path | None:
        """The context's file that became ``path`` in the image, if one did and is there now."""
        for image_path, src in reversed(self.copies):
            if path != image_path and not path.startswith(image_path.rstrip("/") + "/"):
                continue
            rest = path[len(image_path) :].lstrip("/")
            candidate = (self.context / src / rest) if rest else self.context / src
            if candidate.is_file():
                return candidate
        return None
