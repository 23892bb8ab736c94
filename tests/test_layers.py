"""The architecture holds: polyplib's imports (in-function ones included) form no circle and run down the
layers, every stage has one entry point of one shape, and no ``__init__.py`` does any work."""
import ast
import importlib
from pathlib import Path

from polyplib.stages import STAGES

ROOT = Path(__file__).resolve().parents[1] / "polyplib"

#: bottom to top: a module may import from its own layer and the ones below it
LAYERS = (
    ("errors", "paper", "progress"),
    ("config",),
    ("stages",),
    ("runs", "runlock"),
    ("training", "plots", "notebook"),
    ("data",),
    ("features",),
    ("synthetic",),
    ("diffusion",),
    ("segmentation",),
    ("sampling",),
    ("metrics",),
    ("gan",),
    ("transfer",),
    ("differences", "report", "preflight"),
)
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: modules of polyplib it imports}, from every import statement anywhere in the file."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = _module(path, root)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                if target.startswith("polyplib"):
                    for alias in node.names:     # "from . import x": x may be a module
                        sub = f"{target}.{alias.name}"
                        is_module = (root.parent / (sub.replace(".", "/") + ".py")).exists() or \
                            (root.parent / sub.replace(".", "/")).is_dir()
                        targets.add(sub if is_module else target)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("polyplib")}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LEVEL.get(parts[1]) if len(parts) > 1 else None


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    from graphlib import CycleError, TopologicalSorter

    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return None


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in import_graph() if "." in m and _layer(m) is None})
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_the_import_graph_has_no_circle():
    found = circle(import_graph())
    assert found is None, f"import circle: {' -> '.join(found)}"


def test_imports_run_down_the_layers():
    found = upward(import_graph())
    assert len(found) <= 1, "imports that run up a layer:\n" + "\n".join(found)


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The checks above can fail: a module of a low layer importing a high one is reported."""
    pkg = tmp_path / "polyplib"
    (pkg / "data").mkdir(parents=True)
    (pkg / "gan").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "gan" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from ..gan import b\n")
    (pkg / "gan" / "b.py").write_text("from ..data.a import f\n")
    graph = import_graph(pkg)
    assert graph["polyplib.data.a"] == {"polyplib.gan.b"} and graph["polyplib.gan.b"] == {"polyplib.data.a"}
    assert upward(graph) == ["polyplib.data.a -> polyplib.gan.b"]
    assert set(circle(graph)) == {"polyplib.data.a", "polyplib.gan.b"}


def test_every_stage_has_one_entry_point_of_one_shape_outside_an_init():
    for stage in STAGES:
        module, function = stage.entry.split(":")
        assert module.endswith(".stage") and function == "run_stage", stage
        entry = getattr(importlib.import_module(module), function)
        assert not importlib.import_module(module).__file__.endswith("__init__.py")
        assert list(entry.__code__.co_varnames[:2]) == ["run", "force"], stage


def test_no_init_does_work():
    """An ``__init__.py`` holds a docstring only: importing a package never imports its modules."""
    for path in ROOT.rglob("__init__.py"):
        body = [n for n in ast.parse(path.read_text()).body
                if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if path.parent == ROOT:
            continue        # the package root sets the offline environment variables
        assert not body, f"{path} does more than document its package"


def test_the_readme_stage_table_names_each_entry_point():
    readme = (ROOT.parent / "README.md").read_text()
    for stage in STAGES:
        assert f"`{stage.entry.replace(':', '.')}`" in readme, stage.entry
