"""The teacher's side of the course assignments. Solution-only: a student copy leaves this file out.

Fast: the solution regions are sound and cover every task; make_assignment.py copies what git tracks, stubs
the selected regions and refuses bad input in one line; the reference file holds what the solution computes.
Slow (make test): the teacher's check, a real student copy graded by grade.py in which exactly the selected
tasks fail; and the ladder's check, a trace of which regions every graded test runs.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run
from course import assignments
from course.assignments import AssignmentError, all_regions, find_regions, make_copy, student_text

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"   # spelled apart, so this file holds no marker itself


def git_repo(path, files: dict):
    """A git checkout at path tracking files {relative path: text}."""
    for name, text in files.items():
        os.makedirs(os.path.dirname(path / name), exist_ok=True)
        (path / name).write_text(text)
    for cmd in (["init", "-q"], ["add", *files]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, capture_output=True)
    return str(path)


MODULE = (f'"""a module."""\n\n\ndef f(x):\n    y = x + 1\n    {BEGIN} A1.1: return twice y\n    z = 2 * y\n'
          f'    return z\n    {END}\n\n\ndef g():\n    {BEGIN} A2.1: say "hi"\n    return "hi"\n    {END}\n')


# -- regions --------------------------------------------------------------------------------------------

def test_every_task_has_regions_with_hints_and_every_copy_compiles():
    regions = all_regions(ROOT)
    for task in assignments.POINTS:
        ids = sorted(r.id for r in regions if r.task == task)
        assert ids == [f"{task}.{n}" for n in range(1, len(ids) + 1)], (task, ids)    # numbered 1, 2, … no gap
    for r in regions:
        assert 3 <= len(r.hint.split()) and len(r.indent) + len(f"{BEGIN} {r.id}: {r.hint}") <= 120, r
        assert r.path not in assignments.SOLUTION_ONLY
    for path in {r.path for r in regions}:   # every task removed at once: each file still compiles
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = student_text(f.read(), [r for r in regions if r.path == path], list(assignments.POINTS))
        compile(text, path, "exec", dont_inherit=True)
        assert BEGIN not in text and END not in text


def test_a_selected_region_becomes_a_stub_at_its_indentation_and_the_others_lose_their_markers():
    regions = find_regions("m.py", MODULE)
    assert [(r.id, r.task, r.hint, r.indent, r.begin, r.end) for r in regions] == [
        ("A1.1", "A1", "return twice y", "    ", 6, 9), ("A2.1", "A2", 'say "hi"', "    ", 13, 15)]
    text = student_text(MODULE, regions, ["A1"])
    assert text == ('"""a module."""\n\n\ndef f(x):\n    y = x + 1\n    raise NotImplementedError("A1.1: return '
                    'twice y")\n\n\ndef g():\n    return "hi"\n')
    space = {}
    exec(compile(text, "m.py", "exec"), space)
    with pytest.raises(NotImplementedError, match="A1.1: return twice y"):
        space["f"](1)
    assert space["g"]() == "hi"
    exec(student_text(MODULE, regions, ["A2"]), space)
    assert space["f"](1) == 4
    with pytest.raises(NotImplementedError, match='A2.1: say "hi"'):   # the hint's quotes survive
        space["g"]()


BAD_MARKERS = [
    (f"{BEGIN} A1.1 no colon\nx = 1\n{END}\n", "m.py:1: a malformed BEGIN marker"),
    (f"{BEGIN} A9.1: a hint here\nx = 1\n{END}\n", "m.py:1: region A9.1 names an unknown task"),
    (f"x = 1\n{END}\n", "m.py:2: END SOLUTION without a BEGIN"),
    (f"{BEGIN} A1.1: a hint here\nx = 1\n", "m.py:1: region A1.1 has no END SOLUTION"),
    (f"{BEGIN} A1.1: a hint here\n{BEGIN} A1.2: a hint here\nx = 1\n{END}\n",
     "m.py:2: region A1.2 begins inside region A1.1"),
    (f"{BEGIN} A1.1: a hint here\n{END}\n", "m.py:2: region A1.1 holds no code"),
    (f"{BEGIN} A1.1: a hint here\nx = 1\n{END} A1.1\n", "m.py:3: a malformed END marker"),
]


@pytest.mark.parametrize("text,message", BAD_MARKERS, ids=[m.split(": ", 1)[1] for _, m in BAD_MARKERS])
def test_a_wrong_marker_is_one_line_naming_file_and_line(text, message):
    with pytest.raises(AssignmentError) as e:
        find_regions("m.py", text)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# -- make_assignment.py ---------------------------------------------------------------------------------

def test_a_copy_holds_the_tracked_files_less_the_solution_only_ones(tmp_path):
    root = git_repo(tmp_path / "repo", {"m.py": MODULE, "tests/test_teacher.py": "x = 1\n", "notes.md": "hi\n"})
    (tmp_path / "repo" / "untracked.py").write_text("x = 1\n")
    out = tmp_path / "copy"
    assert make_copy(root, str(out), ["A2"]) == {"A2": ["A2.1"]}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["assignment.json", "m.py", "notes.md"]
    assert json.loads((out / "assignment.json").read_text()) == {"tasks": ["A2"]}
    assert (out / "m.py").read_text() == student_text(MODULE, find_regions("m.py", MODULE), ["A2"])
    assert assignments.assigned_tasks(str(out)) == ["A2"]
    assert assignments.assigned_tasks(root) == list(assignments.POINTS)   # no assignment.json: every task


def test_a_copy_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    root = git_repo(tmp_path / "repo", {"m.py": MODULE})
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(AssignmentError, match="full exists and is not an empty folder"):
        make_copy(root, str(full), ["A1"])
    assert os.listdir(full) == ["keep.txt"]
    with pytest.raises(AssignmentError, match="task A3 has no solution region in the code"):
        make_copy(root, str(tmp_path / "a"), ["A3"])
    broken = git_repo(tmp_path / "broken", {"m.py": MODULE.replace(f"    {END}\n\n\ndef g", "\n\ndef g")})
    with pytest.raises(AssignmentError, match="begins inside region A1.1"):
        make_copy(broken, str(tmp_path / "b"), ["A1"])
    # a BEGIN line indented less than its code: the stub lands outside the function, which then has no body
    misplaced = git_repo(tmp_path / "misplaced",
                         {"m.py": f"def h():\n{BEGIN} A1.1: a hint here\n    return 1\n{END}\n"})
    with pytest.raises(AssignmentError, match=r"the copy of m.py does not compile \(line \d+: .*check"):
        make_copy(misplaced, str(tmp_path / "c"), ["A1"])
    with pytest.raises(AssignmentError, match="is not a git checkout"):
        make_copy(str(full), str(tmp_path / "d"), ["A1"])
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_make_assignment_py_refuses_bad_input_in_one_line(tmp_path):
    one_line_error(run("course/make_assignment.py", "--tasks", "A2,A11", "--out", str(tmp_path / "x"), check=False),
                   "unknown task A11")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    one_line_error(run("course/make_assignment.py", "--tasks", "A2", "--out", str(tmp_path / "full"), check=False),
                   "is not an empty folder")
    one_line_error(run("course/make_assignment.py", "--tasks", "A2", check=False),
                   "the following arguments are required: --out")
    assert not (tmp_path / "x").exists()


def test_a_copys_handout_holds_its_own_tasks_and_what_they_share():
    text = ("# Course\n\nintro\n\n## Set-up\n\nsteps\n\n| task | points |\n|---|---|\n| A1 | 15 |\n| A2 | 10 |\n"
            "| A8 | 10 |\n\n## A1. Attention\n\none\n\n## A2. Prefix\n\ntwo\n\n## A8. BLEU\n\neight\n")
    got = assignments.handout_for(text, ["A2", "A8"])
    assert "## Set-up" in got and "intro" in got and "| A2 | 10 |" in got and "| A8 | 10 |" in got
    assert "## A2. Prefix\n\ntwo" in got and "## A8. BLEU\n\neight" in got
    assert "## A1." not in got and "one" not in got and "| A1 |" not in got
    split = {"A2": [["test_x", 4, []], ["test_y", 6, ["lora", "adapter"]]], "A8": [["test_z", 10, ["a", "b", "c"]]]}
    got = assignments.handout_for(text, ["A2", "A8"], split)
    assert "## A2. Prefix\n\n**Points: 10**, a graded test's cases sharing its points: `test_x` 4, " \
           "`test_y[lora, adapter]` 6.\n" in got
    assert "`test_z` (3 cases) 10." in got


def test_answer_passages_leave_a_copy_and_an_unmatched_marker_is_one_line():
    text = ("keep 1\n    # BEGIN ANSWER A1.Q1\n    secret\n    # END ANSWER\nkeep 2\n"
            "<!-- BEGIN ANSWER A5.Q -->\nhidden\n<!-- END ANSWER -->\nkeep 3  # not a marker: BEGIN ANSWER\n")
    assert assignments.strip_answers("f.py", text) == "keep 1\nkeep 2\nkeep 3  # not a marker: BEGIN ANSWER\n"
    with pytest.raises(AssignmentError, match="f.py:2: an answer has no END ANSWER"):
        assignments.strip_answers("f.py", "x\n# BEGIN ANSWER\ny\n")
    with pytest.raises(AssignmentError, match="f.py:1: END ANSWER without a BEGIN ANSWER"):
        assignments.strip_answers("f.py", "# END ANSWER\n")


def answer_strings() -> list[str]:
    """The strings course/ANSWERS.md lists under "Not in the copy", whitespace collapsed."""
    key = open(os.path.join(ROOT, "course", "ANSWERS.md"), encoding="utf-8").read()
    found = re.findall(r"- Not in the copy: (.*?)(?:\n\n|\n\*\*|\n## |$)", key, flags=re.S)
    return [" ".join(x.split()) for block in found for x in re.findall(r"`([^`]+)`", block)]


def collapsed_texts(root) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "out", "__pycache__", "data")]
        for name in files:
            if name.endswith((".py", ".md", ".toml", ".txt", ".ini")):
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = " ".join(open(path, encoding="utf-8").read().split()).lower()
    return out


def test_no_student_copy_holds_an_answer_that_the_solution_holds(tmp_path):
    """course/ANSWERS.md's give-away strings: each is in the solution (so this scan can fail), and in no
    file of a copy made for every task; the key itself is solution-only."""
    strings = answer_strings()
    assert len(strings) >= 10, strings
    solution = collapsed_texts(ROOT)
    for s in strings:
        assert any(s.lower() in t for p, t in solution.items() if p != os.path.join("course", "ANSWERS.md")), s
    copy = tmp_path / "copy"
    make_copy(ROOT, str(copy), list(assignments.POINTS))
    assert not (copy / "course" / "ANSWERS.md").exists()
    leaks = [(p, s) for p, t in collapsed_texts(copy).items() for s in strings if s.lower() in t]
    assert leaks == []


# -- the reference outputs ------------------------------------------------------------------------------

def test_the_reference_file_holds_what_the_solution_computes():
    """So the references cannot drift from the code they grade against; rerun tests/make_references.py
    after changing what a region computes."""
    import make_references
    fresh = make_references.build()
    stored = np.load(make_references.PATH)
    assert sorted(fresh) == sorted(stored.files)
    for name, value in fresh.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            np.testing.assert_allclose(stored[name], value, atol=1e-6, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(stored[name], value, err_msg=name)


# -- slow: the teacher's check and the ladder's check --------------------------------------------------

@pytest.mark.slow
def test_teachers_check_a_copy_for_a2_and_a8_fails_exactly_their_tests(tmp_path):
    """make_assignment.py for A2 and A8, then grade.py --json on every task in the copy: A2's and A8's tests
    fail with their NotImplementedError, and every other task's tests pass (none of them builds on A2 or A8)."""
    selected = ["A2", "A8"]
    copy = tmp_path / "copy"
    res = run("course/make_assignment.py", "--tasks", ",".join(selected), "--out", str(copy))
    assert "A2 (" in res.stdout and "A8 (" in res.stdout
    for name in assignments.SOLUTION_ONLY:
        assert not (copy / name).exists(), name
    assert (copy / "course" / "ASSIGNMENTS.md").exists() and (copy / "tests" / "reference" / "assignments.npz").exists()
    handout = (copy / "course" / "ASSIGNMENTS.md").read_text(encoding="utf-8")
    assert "## A2. " in handout and "## A8. " in handout and "## A1. " not in handout and "## Set-up" in handout
    for task in selected:   # each task's points, split as its tests' markers split them, and its code's size
        line = re.search(rf"## {task}\. .*?\n\n\*\*Points: (\d+)\*\*, [^:]*: (.*?)\. You write (\d+) region",
                         handout, flags=re.S)
        assert line and int(line.group(1)) == assignments.POINTS[task], task
        assert sum(float(x) for x in re.findall(r"` (?:\(\d+ cases\) )?([\d.]+)", line.group(2))) == assignments.POINTS[task]
        assert "*Objectives:*" in handout.split(f"## {task}. ")[1].split("\n## ")[0]
    graded = subprocess.run([sys.executable, "course/grade.py", "--json", "--tasks", ",".join(assignments.POINTS)],
                            cwd=copy, capture_output=True, text=True, timeout=900)
    assert graded.returncode == 1, graded.stdout + graded.stderr
    report = json.loads(graded.stdout)
    assert "errors" not in report, report["errors"]
    for task, result in report["tasks"].items():
        built_on_selected = assignments.needs(task) & set(selected)
        if task in selected:
            assert result["passed"] == 0 and result["failed"] > 0 and result["points"] == 0, (task, result)
        if built_on_selected:
            for failure in result["failures"]:
                assert failure["reason"].startswith("NotImplementedError: A"), failure
                assert failure["reason"].split(": ")[1][:2] in built_on_selected, failure
        else:
            assert result["failed"] == 0 and result["points"] == result["max"], (task, result["failures"])
    assert report["total"] == sum(assignments.POINTS[t] for t in assignments.POINTS if t not in selected)


@pytest.mark.slow
def test_every_graded_test_runs_its_tasks_code_and_only_what_its_task_builds_on(tmp_path):
    """Traced in a fresh process: a graded test that ran no region of its task could not fail when that task
    is removed; one that ran another task's region would fail in a copy for that task, unless BUILDS_ON
    says its task builds on it. And every region is run by a test of its own task."""
    out = tmp_path / "trace.json"
    code = "from course import assignments; import json, sys; json.dump(assignments.trace_regions('.'), open(sys.argv[1], 'w'))"
    res = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0 and out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    trace = json.loads(out.read_text())
    assert set(t["task"] for t in trace.values()) == set(assignments.POINTS)
    problems = []
    for test, t in trace.items():
        tasks_run = {r.split(".")[0] for r in t["regions"]}
        if not t["passed"]:
            problems.append(f"{test} failed on the solution")
        if t["task"] not in tasks_run:
            problems.append(f"{test} ({t['task']}) runs none of {t['task']}'s regions: it cannot fail")
        if tasks_run - assignments.needs(t["task"]):
            problems.append(f"{test} ({t['task']}) runs {sorted(tasks_run - assignments.needs(t['task']))}")
    graded_runs = {r for t in trace.values() for r in t["regions"] if r.startswith(t["task"] + ".")}
    problems += [f"region {r.id} is run by no test of {r.task}" for r in all_regions(ROOT) if r.id not in graded_runs]
    assert not problems, "\n".join(problems)
