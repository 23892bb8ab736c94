"""The README's contract: its test command is what CI runs; the top level is what the design says."""
import ast
import importlib.metadata
import re
import sys
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


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): case, '-', '_' and '.' do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: files importing it} for every absolute import in polyplib/ and run_all.py
    (lazy imports inside functions too) that is neither the standard library nor polyplib."""
    found: dict[str, set[str]] = {}
    for path in [*sorted((ROOT / "polyplib").rglob("*.py")), ROOT / "run_all.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"polyplib"}:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10: pytest's own TOML reader
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_canonical(re.match(r"[A-Za-z0-9._-]+", req).group()) for req in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {module: sorted(files) for module, files in _third_party_imports().items()
                  if not {_canonical(d) for d in distributions.get(module, [])} & declared}
    assert not undeclared, ("imported by polyplib but not in [project].dependencies of pyproject.toml (module: "
                            f"files; add its distribution, see importlib.metadata.packages_distributions()): {undeclared}")


def test_the_lock_pins_every_declared_dependency_within_its_range():
    """requirements.lock (what CI installs first) stays in step with pyproject.toml: a dependency added
    or narrowed without regenerating the lock fails here, with the README's command to regenerate it."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10: pytest's own TOML reader
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "requirements.lock").read_text()
    pins = {_canonical(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", lock, re.M)}
    wanted = [Requirement(r) for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])]
    stale = [f"{req} (lock: {pins.get(_canonical(req.name), 'missing')})" for req in wanted
             if pins.get(_canonical(req.name)) is None or not req.specifier.contains(pins[_canonical(req.name)])]
    assert not stale, f"requirements.lock is stale; regenerate it as the README says: {stale}"
    assert not re.search(r"^(-e |--index-url|--extra-index-url|--find-links)", lock, re.M)   # no machine's paths


def test_progress_bars_are_widgets_in_jupyter_and_text_under_run_all(monkeypatch):
    """polyplib draws tqdm.auto bars (widgets in a Jupyter kernel), but plain text in the kernels that
    run_all.py starts, whose text output it forwards to the terminal."""
    import tqdm.auto
    import tqdm.std

    from polyplib import progress

    monkeypatch.delenv(progress.TEXT_PROGRESS, raising=False)
    assert progress._tqdm_class() is tqdm.auto.tqdm
    monkeypatch.setenv(progress.TEXT_PROGRESS, "1")
    assert progress._tqdm_class() is tqdm.std.tqdm
    assert f'os.environ["{progress.TEXT_PROGRESS}"] = "1"' in (ROOT / "run_all.py").read_text()
    assert not [p for p in (ROOT / "polyplib").rglob("*.py")
                if p.name != "progress.py" and re.search(r"from tqdm(\.auto)? import", p.read_text())]
