"""The Gradescope autograder (course/make_autograder.py, course/gradescope_run.py), run in a folder laid
out as Gradescope lays it: 0 points for a copy with the task stubbed, full points with its code in place,
and 0 for a copy whose student made the graded tests pass trivially (the teacher's tests are put back).
Solution-only: a student copy does not hold this file."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, one_line_error, run
from course import assignments


def gradescope(tmp_path, name: str, autograder: str, submission: str) -> dict:
    """Unzip the autograder into <root>/source, the submission into <root>/submission, run run_autograder
    as Gradescope would, and return results.json."""
    root = tmp_path / name
    with zipfile.ZipFile(autograder) as z:
        z.extractall(root / "source")
    shutil.copytree(submission, root / "submission" / "my-copy")       # an upload of the folder itself
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads((root / "results" / "results.json").read_text())


def test_results_json_is_gradescopes_format_a_test_per_task():
    report = {"tasks": {"A8": {"title": "corpus BLEU", "points": 5.0, "max": 10, "passed": 1, "failed": 1,
                               "failures": [{"test": "t::x", "reason": "AssertionError: 1 != 2"}]}},
              "total": 5.0, "max": 10, "errors": ["no test of A9 was collected"]}
    out = assignments.gradescope_results(report)
    assert out["score"] == 5.0 and out["output"] == "error: no test of A9 was collected"
    assert out["tests"] == [{"name": "A8: corpus BLEU", "score": 5.0, "max_score": 10, "visibility": "visible",
                             "output": "1 passed, 1 failed\nt::x: AssertionError: 1 != 2"}]


def test_make_autograder_writes_gradescopes_files_and_refuses_bad_input_in_one_line(tmp_path):
    out = tmp_path / "autograder.zip"
    res = run("course/make_autograder.py", "--tasks", "A8", "--out", str(out))
    assert "grading A8 (10 points)" in res.stdout
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert json.loads(z.read("teacher/assignment.json")) == {"tasks": ["A8"]}
        assert (z.getinfo("run_autograder").external_attr >> 16) & 0o111                  # executable
    assert {"setup.sh", "run_autograder", "gradescope_run.py", "requirements.txt"} <= names
    assert {f"teacher/{f}" for f in assignments.TEACHER_FILES} <= names
    one_line_error(run("course/make_autograder.py", "--tasks", "A8", "--out", str(out), check=False), "exists")
    one_line_error(run("course/make_autograder.py", "--tasks", "A9", "--out", str(tmp_path / "b.zip"), check=False),
                   "unknown task A9")
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.slow
def test_the_autograder_gives_zero_to_a_stub_full_points_to_the_code_and_zero_to_a_tampered_test(tmp_path):
    autograder = tmp_path / "autograder.zip"
    assignments.build_autograder(ROOT, str(autograder), ["A8"])
    stub, intact = tmp_path / "copy_a8", tmp_path / "copy_a7"
    assignments.make_copy(ROOT, str(stub), ["A8"])          # A8's code stubbed
    assignments.make_copy(ROOT, str(intact), ["A7"])        # A8's code in place (its assignment.json says A7)
    stubbed = gradescope(tmp_path, "stub", str(autograder), str(stub))
    assert stubbed["score"] == 0 and [t["name"][:3] for t in stubbed["tests"]] == ["A8:"]
    assert stubbed["tests"][0]["max_score"] == 10 and "NotImplementedError: A8" in stubbed["tests"][0]["output"]
    solved = gradescope(tmp_path, "solved", str(autograder), str(intact))
    assert solved["score"] == 10 and solved["tests"][0]["score"] == 10, solved    # the teacher's task list: A8
    # the student makes A8's graded tests pass trivially, and says the copy was made for nothing graded
    (stub / "tests" / "test_metrics.py").write_text("import pytest\n\n\n@pytest.mark.a8\ndef test_ok():\n    pass\n")
    (stub / "course" / "grade.py").write_text("print('{\"tasks\": {}, \"total\": 10, \"max\": 10}')\n")
    (stub / "assignment.json").write_text('{"tasks": ["A7"]}\n')
    (stub / "conftest.py").write_text("import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\n"   # every test "passes"
                                      "def pytest_runtest_call(item):\n    item.runtest = lambda: None\n")
    tampered = gradescope(tmp_path, "tampered", str(autograder), str(stub))
    assert tampered["score"] == 0 and "NotImplementedError: A8" in tampered["tests"][0]["output"]


def test_a_submission_without_the_project_gets_zero_and_the_reason(tmp_path):
    autograder = tmp_path / "autograder.zip"
    assignments.build_autograder(ROOT, str(autograder), ["A8"])
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("my answers")
    out = gradescope(tmp_path, "empty", str(autograder), str(empty))
    assert out["score"] == 0 and "no model.py in the submission" in out["output"]
