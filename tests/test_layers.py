"""Imports flow one way: api -> searcher -> indexer. A parse of every import keeps it so."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"indexer": {"searcher", "api"}, "searcher": {"api"}, "api": set()}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): imported_packages(f) & FORBIDDEN[package] for f in files}
    assert not {f: bad for f, bad in offenders.items() if bad}


def test_library_code_does_not_print():
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            if path.name in ("cli.py", "commands.py", "__main__.py"):
                continue  # the CLI's job is to print (through typer.echo)
            calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
            assert not calls, f"{path} uses print(); use logging"


def module_imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_cycles_inside_a_package(package):
    """cli -> commands -> cli and the like: each package's modules import each other one way only."""
    # Package __init__ files only re-export their modules: not a cycle of the code's own making.
    files = [f for f in (ROOT / package).rglob("*.py") if f.name != "__init__.py"]
    modules = {".".join(f.relative_to(ROOT).with_suffix("").parts): f for f in files}
    graph = {name: {m for m in module_imports(f) if m in modules and m != name} for name, f in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, cycles[0]


EXTRAS_ONLY = {"ray", "pgvector", "psycopg", "pyarrow"}


def guarded_or_lazy(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside a function or a try block (they run only when used)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try)):
            lines |= {n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def test_the_default_install_needs_neither_ray_nor_postgres(monkeypatch):
    """Ray and Postgres are extras: not dependencies, imported only where used (or guarded), and a
    postgresql:// location without them names the extra to install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split("[")[0].split(">")[0].split("=")[0] in EXTRAS_ONLY]
    assert {"distributed", "postgres"} <= set(project["optional-dependencies"])
    offenders = []
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            lazy = guarded_or_lazy(tree)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in lazy:
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in EXTRAS_ONLY]
    assert not offenders

    import indexer.storage.postgres as postgres
    from indexer.errors import ConfigError
    from indexer.storage import PhotoIndex

    monkeypatch.setattr(postgres, "Vector", None)  # as without the [postgres] extra
    with pytest.raises(ConfigError, match=r"pip install 'diffsearch\[postgres\]'"):
        PhotoIndex.open("postgresql://u@/db?host=/nowhere")
