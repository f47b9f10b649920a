"""The layout: one subpackage per stage, imported in one direction only; no import cycles
between modules or subpackages (lazy imports included), no private names across modules,
no module over 600 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchrun"
MAX_LINES = 600
MAX_ROOT_MODULES = 10
# The stages in the one order they may import each other: a subpackage imports only those
# before it (and the root's shared base). The emulator is a separate server and imports
# nothing of ours; ``job`` imports nothing but the base; ``store`` never imports ``send``.
STAGES = (
    "emulator",
    "job",
    "io",
    "store",
    "send",
    "output",
    "engines",
    "engines.ray",
    "report",
    "compare",
    "plan",
)
# Root modules any stage may import: the error tree, the records between stages, the version.
BASE = ("_errors", "_types", "_version")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(imported module, names taken from it) for every import, at any depth."""
    package = _package_of(module, path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, tuple(alias.name for alias in node.names)


def _edges() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from pkg import mod`` counts as mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in _imports(name, path):
            for candidate in (target, *(f"{target}.{n}" for n in names)):
                if candidate in modules and candidate != name:
                    graph[name].add(candidate)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _stage(module: str) -> str:
    """The subpackage a module belongs to (``engines.ray`` for ``batchrun.engines.ray.x``),
    or the module's own name for one at the root (``_errors``, ``cli``, ``batchrun``)."""
    path = _modules()[module]
    package = _package_of(module, path)
    if package == "batchrun":
        return module.removeprefix("batchrun.")
    return package.removeprefix("batchrun.")


def _stage_edges() -> dict[str, set[str]]:
    """subpackage (or root module) -> the subpackages and root modules it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in _edges().items():
        stage = _stage(module)
        graph.setdefault(stage, set()).update(
            other for target in targets if (other := _stage(target)) != stage
        )
    return graph


def test_the_root_keeps_few_modules_and_the_stages_are_subpackages() -> None:
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root
    sizes = {
        stage: sum(
            1 for module in _modules() if _stage(module) == stage and module != f"batchrun.{stage}"
        )
        for stage in STAGES
    }
    assert sum(1 for size in sizes.values() if size >= 2) >= 5, sizes


def test_every_subpackage_is_a_named_stage_with_a_docstring() -> None:
    packages = {
        str(init.parent.relative_to(PACKAGE)).replace("/", "."): init
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE
    }
    assert sorted(packages) == sorted(STAGES)
    undocumented = [
        name
        for name, init in packages.items()
        if not ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    ]
    assert undocumented == []


def test_stages_import_each_other_in_one_direction_only() -> None:
    graph = _stage_edges()
    offenders = [
        f"{stage} imports {target}"
        for index, stage in enumerate(STAGES)
        for target in sorted(graph.get(stage, ()))
        if target not in STAGES[:index] and target not in BASE
    ]
    assert offenders == []


def test_the_base_and_the_job_import_nothing_of_ours_above_them() -> None:
    graph = _stage_edges()
    assert graph["job"] <= {"_errors", "_types"}
    assert all(graph[base] <= set(BASE) for base in BASE)
    assert "send" not in graph["store"]
    assert graph["emulator"] == set()


def test_the_subpackages_have_no_import_cycle_lazy_imports_included() -> None:
    cycle = _cycle(_stage_edges())
    assert cycle is None, " -> ".join(cycle or ())


def test_the_package_has_no_import_cycle_lazy_imports_included() -> None:
    cycle = _cycle(_edges())
    assert cycle is None, " -> ".join(cycle or ())


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_private_name_of_another() -> None:
    modules = _modules()
    offenders = [
        f"{name} imports {target}.{imported}"
        for name, path in modules.items()
        for target, names in _imports(name, path)
        if target in modules and target != name
        for imported in names
        if imported.startswith("_")
        and not imported.startswith("__")
        and f"{target}.{imported}" not in modules
    ]
    assert offenders == []


def test_every_module_is_at_most_600_lines() -> None:
    long = {
        name: lines
        for name, path in _modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_test_imports_the_tests_package() -> None:
    """``tests`` is not a package on an installed project's path (CI runs pytest without
    PYTHONPATH): helpers come from ``conftest`` by its own name."""
    tests = Path(__file__).resolve().parent
    offenders = [
        f"{path.name}: {node.module}"
        for path in sorted(tests.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests"
    ]
    assert offenders == []
