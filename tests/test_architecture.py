"""The house rules of the package layout, checked on the source (no import of the package needed):
dependencies point one way (cli → detector → stages → io/errors), there is no import loop, and no
module reaches another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "aeanomaly"

#: Application layers: may import anything below them, nothing imports them but each other.
APPS = ("aeanomaly.cli", "aeanomaly.review")
#: Optional engines: imported only inside the functions that use them (the default path imports none).
OPTIONAL = ("aeanomaly.distributed", "ray")
#: The composition and its persistence.
UPPER = ("aeanomaly.detector", "aeanomaly.bundle", "aeanomaly.fitting")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every import in the file, module level or inside functions."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            out.append((target, names))
            if not node.module:  # from . import x: x is a module
                out += [(f"{target}.{n}", []) for n in names]
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for target, _ in _imports(path):
            while target and target not in files:  # aeanomaly.io.scan → aeanomaly.io.scan, a name → its module
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != mod and target.startswith("aeanomaly"):
                deps.add(target)
        graph[mod] = deps
    return graph


def _is(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_no_import_loop():
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a loop of logic: leave those edges out
    edges = {m: {d for d in ds if not (m.startswith(d + ".") and d in graph)} for m, ds in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import loops: " + "; ".join(" → ".join(c) for c in cycles)


def test_dependencies_point_one_way():
    bad = []
    for mod, deps in _graph().items():
        for d in deps:
            if _is(d, APPS) and not _is(mod, APPS):
                bad.append(f"{mod} imports the application layer {d}")
            elif _is(d, UPPER) and not (_is(mod, APPS) or _is(mod, UPPER) or _is(mod, OPTIONAL)):
                bad.append(f"the stage {mod} imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_no_private_name_crosses_a_module():
    bad = []
    for path in PKG.rglob("*.py"):
        for target, names in _imports(path):
            bad += [f"{_module_name(path)} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_cli_sub_commands_import_only_the_shared_helpers():
    cli = PKG / "cli"
    for path in cli.glob("*.py"):
        if path.name in ("__init__.py", "__main__.py", "common.py"):
            continue
        siblings = {t for t, _ in _imports(path) if t.startswith("aeanomaly.cli")}
        assert siblings <= {"aeanomaly.cli.common", "aeanomaly.cli"} and "aeanomaly.cli" not in siblings, \
            f"{path.name} imports {sorted(siblings)}"


def test_optional_engines_are_imported_only_when_asked():
    bad = []
    for path in PKG.rglob("*.py"):
        mod = _module_name(path)
        if _is(mod, OPTIONAL):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                [f"aeanomaly.{node.module}"] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{mod} imports {n} at module level" for n in names if _is(n, OPTIONAL) or "distributed" in n]
    assert not bad, "\n".join(bad)
