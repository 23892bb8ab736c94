"""Notebook hygiene: stripped outputs, a literal parameters cell, the shared opening, one per stage."""
import ast
import json
from pathlib import Path

import pytest

from polyplib.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETERS = {"profile", "overrides", "run_dir", "force"}  # what run_all.py injects


def test_every_stage_has_its_notebook_and_back():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(s.notebook for s in STAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_follows_the_conventions(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for c in cells:
        if c["cell_type"] == "code":
            assert c.get("outputs") == [] and c.get("execution_count") is None, f"{path.name} has outputs"
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert "What this notebook answers" in "".join(cells[0]["source"])
    assert "Learning objectives" in "".join(cells[0]["source"])          # the course layer: objectives first,
    exercises = "".join(cells[-1]["source"])                               # exercises last (two or more)
    assert exercises.startswith("## Exercises") and "\n2. " in exercises
    param = cells[1]
    assert "parameters" in param["metadata"].get("tags", []), "second cell must be the parameters cell"
    tree = ast.parse("".join(param["source"]))
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign), "parameters cell: assignments only"
        ast.literal_eval(node.value)  # literals only
        names |= {t.id for t in node.targets}
    assert PARAMETERS <= names
    import papermill

    assert PARAMETERS <= set(papermill.inspect_notebook(str(path)))  # papermill can read every one
    assert "setup(profile, overrides, run_dir" in "".join(cells[2]["source"])
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for stmt in ast.walk(ast.parse(code)):
        assert not isinstance(stmt, (ast.ClassDef, ast.FunctionDef)), "logic belongs in polyplib"
        assert not isinstance(stmt, ast.While)
    assert "Exercises" in "".join(cells[-1]["source"])
