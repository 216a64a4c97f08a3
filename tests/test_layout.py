"""The layout the README's code map describes: scripts at the top and in experiments/, checks/ and course/;
shared code in prefixgpt/ (and data/); model.py imports only torch and the standard library; no script
imports another script; no module imports itself back through others (no cycles)."""
import ast
import glob
import os
import sys

from conftest import ROOT

SCRIPTS = ["train.py", "finetune_prefix.py", "sample.py", "evaluate.py", "demo.py",
           "experiments/compare.py", "experiments/probe.py", "experiments/attention_mass.py",
           "checks/bench.py", "checks/devicecheck.py", "course/grade.py", "course/make_assignment.py",
           "data/shakespeare/prepare.py", "data/e2e/prepare.py", "data/sst2/prepare.py"]


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def project_files() -> list[str]:
    files = glob.glob("*.py", root_dir=ROOT) + glob.glob("*/**/*.py", root_dir=ROOT, recursive=True)
    return sorted(f for f in files if not f.startswith(("tests/", ".venv/")) and "/." not in f)


def imports(path: str, names: set[str]) -> set[str]:
    """The project modules a file imports (at any depth: a function's import counts too)."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n in names}


def graph() -> dict[str, set[str]]:
    files = project_files()
    names = {module_name(f) for f in files}
    return {module_name(f): imports(f, names) - {module_name(f)} for f in files}


def test_every_script_the_readme_names_exists_and_the_top_level_holds_only_what_a_student_runs_first():
    for s in SCRIPTS:
        assert os.path.isfile(os.path.join(ROOT, s)), s
    top = sorted(glob.glob("*.py", root_dir=ROOT))
    assert top == ["demo.py", "evaluate.py", "finetune_prefix.py", "model.py", "prefix.py", "sample.py", "train.py"]


def test_model_imports_only_torch_and_the_standard_library():
    tree = ast.parse(open(os.path.join(ROOT, "model.py"), encoding="utf-8").read())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"torch"} | set(sys.stdlib_module_names), roots


def test_no_script_imports_another_script():
    scripts = {module_name(s) for s in SCRIPTS}
    for name, deps in graph().items():
        assert not deps & scripts, f"{name} imports the script(s) {deps & scripts}"


def test_no_import_cycles():
    g = graph()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in g.get(node, ()):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = "done"
    for node in g:
        if node not in state:
            visit(node, [])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a planted pair of modules that import each other is reported."""
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: {"a": {"b"}, "b": {"a"}})
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "a -> b -> a" in str(e)
    else:
        raise AssertionError("a cycle went unnoticed")
