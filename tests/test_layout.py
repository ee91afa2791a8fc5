"""The package's shape: layers whose dependencies point one way (models <- data <- training <- hub
<- apps <- cli), no import cycle, a self-contained model folder, and modules of one idea."""

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "hbi_transformers"
LAYERS = ("models", "data", "training", "hub", "apps", "cli")
# Modules over the size limit that are still one idea each.
LARGE_BUT_ONE_IDEA = {
    "models/hbi/modeling_hbi.py",  # HBIModel: encoders, the level walk, scores, loss, construction
    "models/hbi/convert_hbi_original_to_hf.py",  # the key maps of the official checkpoints
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = ["hbi_transformers", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every hbi_transformers module `path` imports, at any depth of the file (function-level
    imports included), resolved to module names (a package means its __init__)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in candidates if name in MODULES}
    return found


MODULES = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    outside = sorted(name for name in MODULES if layer_of(name) is None and name != "hbi_transformers")
    assert outside == []


def test_dependencies_point_one_way():
    upward = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if layer_of(name) is not None and layer_of(target) is not None and layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_the_model_folder_imports_nothing_else_of_the_package():
    outside = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith("hbi_transformers.models.hbi")
        for target in targets
        if not target.startswith("hbi_transformers.models.hbi")
    ]
    assert outside == []


def test_no_import_cycle():
    # Tarjan's strongly connected components; any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_graph_sees_imports():
    # The checks above mean something only if imports are found, relative and nested ones included.
    assert "hbi_transformers.models.hbi.wti" in GRAPH["hbi_transformers.models.hbi.modeling_hbi"]
    assert "hbi_transformers.cli.loading" in GRAPH["hbi_transformers.cli.train"]
    assert "hbi_transformers.data" in GRAPH["hbi_transformers.training.evaluation.encoding"]


@pytest.mark.parametrize("path", sorted(PACKAGE_ROOT.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE_ROOT)))
def test_modules_stay_small(path):
    relative = path.relative_to(PACKAGE_ROOT).as_posix()
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES or relative in LARGE_BUT_ONE_IDEA, f"{relative}: {lines} lines"


def test_comments_point_into_the_repository():
    # The method is documented in docs/; nothing may cite a document the repository lacks.
    stale = [
        str(path.relative_to(PACKAGE_ROOT))
        for path in PACKAGE_ROOT.rglob("*.py")
        if "spec section" in path.read_text() or "HBI_SPEC" in path.read_text()
    ]
    assert stale == []
