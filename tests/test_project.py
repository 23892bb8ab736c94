"""The README's contract: its test command is what CI runs; the top level is what the design says."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in re.findall(r"```(?:bash)?\n(.*?)```", block, re.S)[0].splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    commands = _quick_start_commands()
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd[0] in ci.splitlines()
    assert any("run_all.py" in c for c in commands)


def test_top_level_layout():
    for name in ("notebooks", "polyplib", "environment.yml", "run_all.py", "figures", "tests", "README.md",
                 "pyproject.toml", ".ci/run", "benchmarks", ".gitattributes"):
        assert (ROOT / name).exists(), name
    assert "jupyternotebook" in (ROOT / ".gitattributes").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"torchvision==0.29.1"' in pyproject
