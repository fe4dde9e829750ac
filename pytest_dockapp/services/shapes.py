"""A compose file as YAML, and the shape each compose key takes, as the Compose Specification's
schema says, so that a value of the wrong shape is one error naming the key, the shape and the
file (a list where a mapping belongs was an AttributeError, a mapping of volumes ran as
anonymous volumes)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_dockapp.core import state_files
from pytest_dockapp.core.errors import ComposeError
from pytest_dockapp.core.redact import holds_literal_secret

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


def read_yaml(path: Path) -> Any:
    """The YAML of ``path`` as compose reads it (YAML 1.2's booleans); the parse of the same text
    is kept for the next session, which then imports no PyYAML, unless the file writes a secret
    out (a password in it stays in the user's file only)."""
    return state_files.memo(
        "compose-yaml-1",
        path.read_text(encoding="utf-8", errors="replace"),
        lambda t: _parse(t, path),
        keep=lambda v: not holds_literal_secret(v),
    )


def _parse(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path} is not valid YAML", evidence=str(exc), evidence_title="YAML said") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ComposeError(
            f"{path} nests deeper than YAML can be read", hint="no compose key nests this deep"
        ) from None


def _loader() -> Any:
    """PyYAML's safe loader, with YAML 1.2's booleans (compose-go reads YAML 1.2): ``yes``,
    ``no``, ``on`` and ``off`` stay strings, so ``DEBUG: yes`` is ``yes`` as in compose."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    resolvers = {
        first: [(tag, rx) for tag, rx in found if tag != "tag:yaml.org,2002:bool"]
        for first, found in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def key_line(paths: Sequence[Path], service: str, key: str) -> str:
    """``file:line`` of ``services.<service>.<key>`` in the last of ``paths`` that has it."""
    import yaml

    found = str(paths[-1].name)
    for path in paths:
        try:
            root = yaml.compose(path.read_text(encoding="utf-8", errors="replace"), Loader=_loader())
        except yaml.YAMLError:
            continue
        node = _child(_child(root, "services"), service)
        key_node = _child_key(node, key)
        if key_node is not None:
            found = f"{path.name}:{key_node.start_mark.line + 1}"
    return found


def _child(node: Any, name: str) -> Any:
    key = _child_key(node, name)
    if key is None:
        return None
    return next(v for k, v in node.value if k is key)


def _child_key(node: Any, name: str) -> Any:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return None
    return next((k for k, _ in node.value if getattr(k, "value", None) == name), None)
