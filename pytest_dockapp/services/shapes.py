"""The shape each compose key takes, as the Compose Specification's schema says, so that a
value of the wrong shape is one error naming the key, the shape and the file (a list where a
mapping belongs was an AttributeError, a mapping of volumes ran as anonymous volumes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_dockapp.core.errors import ComposeError

#: The shape each key takes, as the Compose Specification's schema says: (types, how it reads).
_STR, _LIST, _MAP, _NUM = (str,), (list,), (dict,), (int, float)
TOP_SHAPES: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((str, *_NUM), "a string"),
    "name": (_STR, "a string"),
    "services": (_MAP, "a mapping of service names"),
    "volumes": (_MAP, "a mapping of volume names, e.g. volumes: {data: {}}"),
    "networks": (_MAP, "a mapping of network names, e.g. networks: {back: {}}"),
    "secrets": (_MAP, "a mapping of secret names, e.g. secrets: {db_password: {file: ./pw.txt}}"),
}
SERVICE_SHAPES: dict[str, tuple[tuple[type, ...], str]] = {
    "build": ((str, dict), "a context path, or a mapping (context, dockerfile, args, ...)"),
    "image": (_STR, "a string"),
    "command": ((str, list), "a string or a list"),
    "entrypoint": ((str, list), "a string or a list"),
    "environment": ((list, dict), "a list of KEY=VALUE or a mapping"),
    "env_file": ((str, list), "a path or a list of paths"),
    "working_dir": (_STR, "a string"),
    "user": ((str, int), "a string"),
    "hostname": (_STR, "a string"),
    "init": ((bool,), "true or false"),
    "tmpfs": ((str, list), "a path or a list of paths"),
    "labels": ((list, dict), "a list of KEY=VALUE or a mapping"),
    "volumes": (_LIST, "a list, e.g. volumes: [data:/data] or [{type: volume, source: data, target: /data}]"),
    "ports": (_LIST, 'a list, e.g. ports: ["8080:80"]'),
    "expose": (_LIST, 'a list, e.g. expose: ["80"]'),
    "depends_on": ((list, dict), "a list of services or a mapping of service to condition"),
    "healthcheck": (_MAP, 'a mapping, e.g. healthcheck: {test: ["CMD", "true"], interval: 5s}'),
    "networks": ((list, dict), "a list of network names or a mapping"),
    "profiles": (_LIST, "a list of names"),
    "container_name": (_STR, "a string"),
}


def check_shapes(
    body: Mapping[Any, Any], shapes: Mapping[str, tuple[tuple[type, ...], str]], where: str, what: str
) -> None:
    """A key whose value has the wrong shape is a :class:`ComposeError` naming the key, the
    shape the Compose Specification asks for, and the file."""
    for key, value in body.items():
        shape = shapes.get(str(key))
        if shape is None or value is None or isinstance(value, shape[0]):
            continue
        kind = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
            type(value), type(value).__name__
        )
        raise ComposeError(
            f"{where}: {what}{key} is {kind}, but must be {shape[1]}",
            hint="compare it with the Compose Specification's form of that key",
        )
