"""ARCHITECTURE.md's rules, checked on the source: each package imports only the layers below
it, no import cycle (``TYPE_CHECKING`` and function-level imports count too), and no folder,
module or function past its size limit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .helpers import ROOT

PACKAGE = ROOT / "pytest_dockapp"

#: Each layer and the layers it may import (its own included). The pytest layer (the modules at
#: the top of the package) may import every layer; no layer may import it.
LAYERS = {
    "core": {"core"},
    "engine": {"core", "engine"},
    "builds": {"core", "engine", "builds"},
    "cache": {"core", "engine", "builds", "cache"},
    "run": {"core", "engine", "builds", "run"},
    "services": {"core", "engine", "builds", "run", "services"},
    "budgets": {"core", "engine", "builds", "budgets"},
    "appcov": {"core", "engine", "builds", "run", "appcov"},
}
MAX_MODULES, MAX_LINES, MAX_FUNCTION = 12, 600, 80


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "pytest_dockapp":
                out.add(target)
    return out


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        layer = _layer(name)
        if layer is None:
            continue  # the pytest layer and the package's public surface
        for target in _imports(name, path, set(modules)):
            theirs = _layer(target)
            if theirs not in LAYERS[layer]:
                wrong.append(f"{name} ({layer}) imports {target} ({theirs or 'the pytest layer'})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    graph = {n: {t for t in deps if not t.startswith(n + ".")} for n, deps in graph.items()}  # a package's own

    def visit(node: str, stack: list[str], done: set[str]) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*stack, node], done)
            if cycle:
                return cycle
        done.add(node)
        return None

    done: set[str] = set()
    for name in sorted(graph):
        if name == "pytest_dockapp":
            continue  # the lazy public surface names every layer by design
        cycle = visit(name, [], done)
        assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("folder", sorted({p.parent for p in PACKAGE.rglob("*.py")}), ids=str)
def test_no_folder_holds_more_than_twelve_modules(folder: Path) -> None:
    assert len(list(folder.glob("*.py"))) <= MAX_MODULES


def test_no_module_or_function_is_too_long() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = (node.end_lineno or 0) - node.body[0].lineno + 1  # the signature's lines not counted
                if body > MAX_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {body} lines")
    assert not long, "\n".join(long)


def test_architecture_md_names_every_package() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer in LAYERS:
        assert f"`{layer}/`" in text


def test_the_settings_table_is_the_only_list_of_settings() -> None:
    """`Settings` takes its attributes from `SETTINGS`: no second list of names or defaults."""
    from pytest_dockapp.options import SETTINGS, Settings

    tree = ast.parse((PACKAGE / "options.py").read_text())
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    assert not [n for n in settings.body if isinstance(n, ast.AnnAssign)], "Settings declares fields of its own"
    made = Settings({})
    assert Settings.names() == [s.name for s in SETTINGS]
    assert all(getattr(made, s.name) == s.default for s in SETTINGS)
    with pytest.raises(TypeError, match="not settings: nonsense"):
        Settings({"nonsense": 1})


def test_no_module_writes_the_managers_fields_or_calls_its_private_members() -> None:
    """The session's manager changes through its operations (``lose_engine``, ``mask``,
    ``on_close``, ``leave_behind``, ``creation``, ``settings``): one owner of its state."""
    import re

    fields = "engine_lost|sweep_kept|warned_args|closers|secrets|left_behind|cancelled"
    writes = re.compile(rf"\b(?:manager|apps|_apps)\.(?:{fields})\s*(?:[|+-]?=(?!=)|\.(?:append|update|remove|add))")
    private = re.compile(r"\b(?:manager|apps|_apps)\._[a-z]")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "manager.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if writes.search(line) or private.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _functions() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    return [
        (path, node)
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_no_untyped_keyword_bag_in_the_library() -> None:
    """Settings travel as typed values (a spec, options, a wait plan), never as ``**kwargs: Any``
    that each layer completes. A keyword set a caller writes is a ``TypedDict`` (``Unpack``)."""
    found = []
    for path, node in _functions():
        layer = path.relative_to(PACKAGE).parts[0]
        if layer in ("run", "builds", "services") and node.args.kwarg is not None:
            annotation = node.args.kwarg.annotation
            if annotation is None or ast.unparse(annotation) == "Any":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not found, "\n".join(found)


def test_no_function_takes_more_than_ten_parameters() -> None:
    """More than ten is a bag of settings that wants a name: a frozen dataclass (``AppOptions``,
    ``SessionOptions``, ``WaitPlan``) or, for what users call with keywords, a ``TypedDict``."""
    found = []
    for path, node in _functions():
        args = node.args
        names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        count = len(names) - (names[:1] in (["self"], ["cls"]))
        if count > 10:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    assert not found, "\n".join(found)
