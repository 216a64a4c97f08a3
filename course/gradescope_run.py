"""
gradescope_run.py — what the autograder runs for each submission (its run_autograder calls this file).

    AUTOGRADER_ROOT=/tmp/ag python3 gradescope_run.py     # the folders as Gradescope lays them, elsewhere

Gradescope puts the autograder's files in <root>/source, the student's files in <root>/submission, and
reads <root>/results/results.json; <root> is /autograder unless AUTOGRADER_ROOT says otherwise. This
script copies the submission (the student's copy of the project, at the top of the upload or in one folder
of it) to <root>/work, puts the teacher's files back over it (source/teacher: the graded tests, their
references, pytest.ini, the grader and the task list; any other conftest.py, sitecustomize.py or .pth
file is removed, since pytest or Python would load it unasked), runs `course/grade.py --json` there, and writes
its report as results.json (course/assignments.py: gradescope_results). So a submission that edits a
test, the grader or assignment.json is graded by the teacher's. It uses the standard library only; it
always writes results.json, with 0 points and the reason when grading could not run.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("AUTOGRADER_ROOT", "/autograder")
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "out")


def project_in(folder: str) -> str | None:
    """The submitted project: the folder itself, or its one subfolder, that holds model.py."""
    if os.path.isfile(os.path.join(folder, "model.py")):
        return folder
    subs = [d for d in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, d, "model.py"))]
    return os.path.join(folder, subs[0]) if len(subs) == 1 else None


def write_results(results: dict):
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    with open(os.path.join(ROOT, "results", "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def zero(reason: str) -> dict:
    return {"score": 0.0, "output": reason, "tests": [], "visibility": "visible"}


def main() -> int:
    teacher = os.path.join(HERE, "teacher")
    spec = importlib.util.spec_from_file_location("teacher_assignments", os.path.join(teacher, "course", "assignments.py"))
    assignments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assignments)
    submitted = project_in(os.path.join(ROOT, "submission"))
    if submitted is None:
        write_results(zero("no model.py in the submission: upload the whole project folder (the student copy)"))
        return 0
    work = os.path.join(ROOT, "work")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(submitted, work, ignore=SKIP)
    for dirpath, _, files in os.walk(work):      # what pytest or Python would load on its own: only the teacher's
        for name in files:
            if name in ("conftest.py", "sitecustomize.py", "usercustomize.py") or name.endswith(".pth"):
                os.remove(os.path.join(dirpath, name))
    for dirpath, _, files in os.walk(teacher):   # the teacher's files win over the submission's
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), teacher)
            os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(dirpath, name), os.path.join(work, rel))
    res = subprocess.run([sys.executable, "course/grade.py", "--json"], cwd=work, capture_output=True, text=True,
                         timeout=3600)
    try:
        report = json.loads(res.stdout)
    except ValueError:
        write_results(zero("grading did not run: " + (res.stderr.strip().splitlines() or ["no output"])[-1]))
        return 0
    write_results(assignments.gradescope_results(report))
    print(f"score {report['total']} / {report['max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
