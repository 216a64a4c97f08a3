"""
assignments.py — the course assignments, made from the project itself: what each task is and is worth, the
solution regions marked in the code, the student copy, and the grader's bookkeeping. make_assignment.py and
grade.py are thin command lines over this module. It knows nothing about models.

A solution region is a block of the project's working code between two comment lines, a first one
`# BEGIN SOLUTION A2.1: a one-line hint for the student` and a last one `# END SOLUTION`, each alone on its
line (this docstring writes them inside sentences, so that it holds no marker itself). In a student copy,
a region of a selected task becomes `raise NotImplementedError("A2.1: <hint>")` at the BEGIN line's
indentation; every other region keeps its code, and its two marker lines go. So the solution repository
is this project: what a student rebuilds is exactly what the tests and the scripts run.

A task's tests carry its pytest marker (a1 … a8). They may also run code of the tasks it builds on
(BUILDS_ON): a mixed batch of prefixes needs A1's mask. A copy for a task keeps every other task's
solution, so a student is graded on their task alone.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

POINTS = {"A1": 15, "A2": 10, "A3": 10, "A4": 10, "A5": 15, "A6": 15, "A7": 15, "A8": 10}
TITLES = {
    "A1": "attention with prefix keys/values: the mask, the weights, positions after the prefix",
    "A2": "the prefix module: the reparameterisation MLP and fold",
    "A3": "prompt tuning as a constrained prefix; a soft prompt's nearest tokens",
    "A4": "mixed-prefix batches of different lengths",
    "A5": "generation with a cache that starts from the prefix",
    "A6": "the frozen tuning step: completion-only loss, only the prefix in the optimiser",
    "A7": "LoRA (forward and merge) and adapters",
    "A8": "corpus BLEU",
}
# the tasks whose code a task's tests also run (checked: tests/test_teacher.py traces every graded test)
BUILDS_ON = {"A1": (), "A2": ("A1",), "A3": ("A1",), "A4": ("A1",), "A5": ("A1", "A3", "A4"),
             "A6": ("A1", "A3"), "A7": (), "A8": ()}

# the files that hold graded tests: the grader collects only these (importing the whole suite would
# cost seconds of imports such as transformers for nothing)
TEST_FILES = ("tests/test_assignments.py", "tests/test_model.py", "tests/test_prefix.py", "tests/test_cache.py",
              "tests/test_finetune.py", "tests/test_methods.py", "tests/test_metrics.py")
# left out of a student copy: what writes the reference outputs, the teacher's own tests, the copier itself
SOLUTION_ONLY = ("course/make_assignment.py", "course/make_autograder.py", "course/ANSWERS.md",
                 "tests/make_references.py", "tests/test_teacher.py", "tests/test_autograder.py")
# a passage that answers a handout question sits between two lines, a first that starts "# BEGIN ANSWER"
# (or "<!-- BEGIN ANSWER" in Markdown) and a last that starts "# END ANSWER" (or "<!-- END ANSWER");
# a student copy drops both and all between
ANSWER_BEGIN = re.compile(r"\s*(#|<!--)\s*BEGIN ANSWER\b")
ANSWER_END = re.compile(r"\s*(#|<!--)\s*END ANSWER\b")
ASSIGNMENT_FILE = "assignment.json"   # written into a copy: the tasks it was made for (grade.py's default)
# what the autograder puts back over a submission before grading, from the teacher's tree: every file that
# decides a grade (the graded tests, their fixtures and references, pytest's settings, the grader itself)
TEACHER_FILES = TEST_FILES + ("tests/conftest.py", "tests/reference/assignments.npz", "pytest.ini",
                              "course/assignments.py", "course/grade.py")

BEGIN = re.compile(r"(?P<indent> *)# BEGIN SOLUTION (?P<id>(?P<task>A\d+)\.\d+): (?P<hint>\S.*)")
END = re.compile(r" *# END SOLUTION")


class AssignmentError(ValueError):
    """Something a teacher or student must fix (a marker, a task name, a folder): one line."""


@dataclass(frozen=True)
class Region:
    path: str          # relative to the project root
    id: str            # "A2.1"
    task: str          # "A2"
    hint: str
    indent: str
    begin: int         # 1-based line numbers of the two markers
    end: int

    def stub(self) -> str:
        """What a selected region becomes: one line, at the BEGIN line's indentation."""
        message = json.dumps(f"{self.id}: {self.hint}", ensure_ascii=False)   # a valid Python string literal too
        return f"{self.indent}raise NotImplementedError({message})\n"


def parse_tasks(text: str) -> list[str]:
    """'A1,a2' → ['A1', 'A2'], in the course's order; unknown or missing names are an AssignmentError."""
    names = [t.strip().upper() for t in text.split(",") if t.strip()]
    if not names:
        raise AssignmentError(f"no task given: name one or more of {', '.join(POINTS)}, comma-separated")
    unknown = [t for t in names if t not in POINTS]
    if unknown:
        raise AssignmentError(f"unknown task {unknown[0]}: the tasks are {', '.join(POINTS)}")
    return [t for t in POINTS if t in names]


def marker_expression(tasks) -> str:
    """The pytest -m expression that selects these tasks' tests."""
    return " or ".join(t.lower() for t in tasks)


def needs(task: str) -> set[str]:
    """Every task whose code this task's tests may run: itself and what it builds on, transitively."""
    out, todo = set(), [task]
    while todo:
        t = todo.pop()
        if t not in out:
            out.add(t)
            todo.extend(BUILDS_ON[t])
    return out


# ----------------------------------------------------------------------------------------------
# Regions

def find_regions(path: str, text: str) -> list[Region]:
    """The regions of one file. A marker that is malformed, names an unknown task, nests, repeats an id or
    is left open is an AssignmentError naming the file and line."""
    regions, open_at = [], None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped.startswith(("# BEGIN SOLUTION", "# END SOLUTION")):
            continue
        where = f"{path}:{n}"
        if stripped.startswith("# END SOLUTION"):
            if not END.fullmatch(line):
                raise AssignmentError(f"{where}: a malformed END marker: write the line `# END SOLUTION` alone")
            if open_at is None:
                raise AssignmentError(f"{where}: END SOLUTION without a BEGIN SOLUTION above it")
            if n == open_at.begin + 1:
                raise AssignmentError(f"{where}: region {open_at.id} holds no code")
            regions.append(Region(path, open_at.id, open_at.task, open_at.hint, open_at.indent, open_at.begin, n))
            open_at = None
            continue
        m = BEGIN.fullmatch(line.rstrip())
        if not m:
            raise AssignmentError(f"{where}: a malformed BEGIN marker: write `# BEGIN SOLUTION A2.1: a one-line hint`")
        if m["task"] not in POINTS:
            raise AssignmentError(f"{where}: region {m['id']} names an unknown task: the tasks are {', '.join(POINTS)}")
        if open_at is not None:
            raise AssignmentError(f"{where}: region {m['id']} begins inside region {open_at.id} "
                                  f"(line {open_at.begin}), which has no END SOLUTION yet")
        open_at = Region(path, m["id"], m["task"], m["hint"], m["indent"], n, 0)
    if open_at is not None:
        raise AssignmentError(f"{path}:{open_at.begin}: region {open_at.id} has no END SOLUTION")
    return regions


def student_text(text: str, regions: list[Region], tasks) -> str:
    """The file as a student gets it: selected regions stubbed, every marker line gone."""
    lines = text.splitlines(keepends=True)
    out, skip_to = [], 0
    starts = {r.begin: r for r in regions}
    ends = {r.end for r in regions}
    for n, line in enumerate(lines, 1):
        if n <= skip_to:
            continue
        if n in starts:
            r = starts[n]
            if r.task in tasks:
                out.append(r.stub())
                skip_to = r.end
            continue
        if n in ends:
            continue
        out.append(line)
    return "".join(out)


def tracked_files(root: str) -> list[str]:
    """The files git tracks under root (relative paths), those that exist in the working tree."""
    try:
        res = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise AssignmentError("git is not installed: the copy is made of the files git tracks") from None
    if res.returncode != 0:
        raise AssignmentError(f"{root} is not a git checkout: the copy is made of the files git tracks")
    return [p for p in res.stdout.split("\0") if p and os.path.isfile(os.path.join(root, p))]


def all_regions(root: str, files=None) -> list[Region]:
    """Every region in the project's Python files (or in files), in file order; ids must be unique."""
    files = [f for f in (tracked_files(root) if files is None else files) if f.endswith(".py")]
    regions, seen = [], {}
    for path in files:
        with open(os.path.join(root, path), encoding="utf-8", newline="") as f:
            for r in find_regions(path, f.read()):
                if r.id in seen:
                    raise AssignmentError(f"{path}:{r.begin}: region {r.id} is also at {seen[r.id]}: "
                                          "ids must be unique")
                seen[r.id] = f"{path}:{r.begin}"
                regions.append(r)
    return regions


HANDOUT = "course/ASSIGNMENTS.md"
TASK_HEADING = re.compile(r"## (A\d+)\. ")


def handout_for(text: str, tasks, split: dict | None = None, regions: list | None = None) -> str:
    """The handout a copy gets: the common part, then only its tasks' sections, and the task table's rows
    for its tasks alone (a section runs from its `## A3. ` heading to the next heading of that level).
    split (points_split's): each task's section then says, under its heading, how its points are split,
    as the graded tests' markers say (so the handout cannot disagree with the grader)."""
    out, keep = [], True
    for line in text.splitlines(keepends=True):
        m = TASK_HEADING.match(line) if line.startswith("## ") else None
        if line.startswith("## "):
            keep = m is None or m.group(1) in tasks
        row = re.match(r"\| (A\d+) \|", line)
        if keep and not (row and row.group(1) not in tasks):
            out.append(line)
        if keep and m and split and split.get(m.group(1)):
            task = m.group(1)
            mine = [r for r in regions or [] if r.task == task]
            size = (f" You write {len(mine)} region{'s' * (len(mine) > 1)}; the solution's are "
                    f"{sum(r.end - r.begin - 1 for r in mine)} lines of code.") if mine else ""
            out.append(f"\n**Points: {POINTS[task]}**, a graded test's cases sharing its points: "
                       f"{points_line(split[task])}.{size}\n")
    return "".join(out)


def collect_points(root: str, tasks) -> dict:
    """points_split of the tree at root, from its own test markers, collected by `course/grade.py --points
    --json` in a process of its own (collecting imports the test files and torch, which this one need not)."""
    res = subprocess.run([sys.executable, os.path.join(root, "course", "grade.py"), "--points", "--json",
                          "--tasks", ",".join(tasks)], cwd=root, capture_output=True, text=True)
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise AssignmentError(f"could not collect the graded tests' points: {res.stderr.strip()[-300:]}") from None


def strip_answers(path: str, text: str) -> str:
    """The text without its answer passages (ANSWER_BEGIN … ANSWER_END lines, both included). An unmatched
    marker is an AssignmentError naming the file and line."""
    out, open_at = [], None
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        if ANSWER_BEGIN.match(line):
            if open_at is not None:
                raise AssignmentError(f"{path}:{n}: an answer begins inside the one at line {open_at}")
            open_at = n
        elif ANSWER_END.match(line):
            if open_at is None:
                raise AssignmentError(f"{path}:{n}: END ANSWER without a BEGIN ANSWER above it")
            open_at = None
        elif open_at is None:
            out.append(line)
    if open_at is not None:
        raise AssignmentError(f"{path}:{open_at}: an answer has no END ANSWER")
    return "".join(out)


def make_copy(root: str, out: str, tasks) -> dict:
    """Write the student copy of root into out (a new or empty folder) for the given tasks. Nothing is written
    unless every marker is sound and every Python file of the copy compiles. Returns {task: region ids}."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise AssignmentError(f"{out} exists and is not an empty folder: give a new folder for the copy")
    files = [p for p in tracked_files(root) if p not in SOLUTION_ONLY]
    regions = all_regions(root, files)
    empty = [t for t in tasks if not any(r.task == t for r in regions)]
    if empty:
        raise AssignmentError(f"task {empty[0]} has no solution region in the code: nothing to assign")
    by_path = {}
    for r in regions:
        by_path.setdefault(r.path, []).append(r)
    texts = {}
    for path in files:
        if not path.endswith(".py"):
            continue
        with open(os.path.join(root, path), encoding="utf-8", newline="") as f:
            texts[path] = student_text(f.read(), by_path.get(path, []), tasks)
    if HANDOUT in files:   # the copy's handout: its own tasks only
        with open(os.path.join(root, HANDOUT), encoding="utf-8", newline="") as f:
            texts[HANDOUT] = handout_for(f.read(), tasks, collect_points(root, tasks), regions)
    for path in files:     # and no answer to a question, in code or docs
        if path.endswith((".py", ".md")):
            if path not in texts:
                with open(os.path.join(root, path), encoding="utf-8", newline="") as f:
                    texts[path] = f.read()
            texts[path] = strip_answers(path, texts[path])
    for path in (p for p in files if p.endswith(".py")):
        try:   # what py_compile would do, before anything is written
            compile(texts[path], path, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise AssignmentError(f"the copy of {path} does not compile (line {e.lineno}: {e.msg}): "
                                  "check that file's solution and answer markers") from None
    for path in files:
        dest = os.path.join(out, path)
        os.makedirs(os.path.dirname(dest) or out, exist_ok=True)
        if path in texts:
            with open(dest, "w", encoding="utf-8", newline="") as f:
                f.write(texts[path])
            shutil.copymode(os.path.join(root, path), dest)
        else:
            shutil.copy2(os.path.join(root, path), dest)
    with open(os.path.join(out, ASSIGNMENT_FILE), "w", encoding="utf-8") as f:
        json.dump({"tasks": list(tasks)}, f)
        f.write("\n")
    return {t: sorted(r.id for r in regions if r.task == t) for t in tasks}


def assigned_tasks(root: str) -> list[str]:
    """The tasks a copy was made for (its assignment.json), or every task in the solution repository."""
    path = os.path.join(root, ASSIGNMENT_FILE)
    if not os.path.exists(path):
        return list(POINTS)
    try:
        with open(path, encoding="utf-8") as f:
            return parse_tasks(",".join(json.load(f)["tasks"]))
    except (ValueError, KeyError, TypeError) as e:
        raise AssignmentError(f"{path} is not a list of tasks ({e}): restore it, or pass --tasks") from None


# ----------------------------------------------------------------------------------------------
# Grading

class Outcomes:
    """A pytest plugin that records, for every test carrying a task marker, its task and whether it passed
    (set-up, call and teardown), with the first line of what went wrong."""

    def __init__(self):
        self.task_of, self.passed, self.reason, self.errors = {}, set(), {}, []
        self.points_of, self.group_of = {}, {}   # a test's points (its marker's), and the function it is a case of

    def pytest_collection_finish(self, session):
        for item in session.items:   # what runs, after -m has deselected the rest
            marks = [m for m in item.iter_markers() if m.name.upper() in POINTS]
            tasks = sorted({m.name.upper() for m in marks})
            if len(tasks) > 1:
                self.errors.append(f"{item.nodeid} carries the markers of {', '.join(tasks)}: a test grades one task")
            elif tasks:
                self.task_of[item.nodeid] = tasks[0]
                points = marks[0].kwargs.get("points")
                if not isinstance(points, (int, float)) or points <= 0:
                    self.errors.append(f"{item.nodeid}: its marker {marks[0].name} needs its points, "
                                       f"e.g. @pytest.mark.{marks[0].name}(points=2)")
                self.points_of[item.nodeid] = points if isinstance(points, (int, float)) else 0
                self.group_of[item.nodeid] = item.nodeid.split("[")[0]   # a parametrised test's cases share its points

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(f"{report.nodeid or 'the test files'} could not be collected: {_first_line(report)}")

    def pytest_runtest_logreport(self, report):
        if report.failed or report.skipped:
            self.reason.setdefault(report.nodeid, ("skipped: " if report.skipped else "") + _first_line(report))
        elif report.when == "call":
            self.passed.add(report.nodeid)


def _first_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple):   # a skip: (file, line, reason)
        text = report.longrepr[2]
    else:
        text = str(report.longrepr)
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else "failed"


def run_tests(root: str, tasks, stdout=None, plugins=(), collect_only=False) -> Outcomes:
    """Run the given tasks' tests of the project at root in this process, -q, with no cache written
    (collect_only: find them and their points, run nothing)."""
    import contextlib
    import pytest
    outcomes = Outcomes()
    args = [os.path.join(root, f) for f in TEST_FILES if os.path.exists(os.path.join(root, f))]
    args += ["-m", marker_expression(tasks), "-q", "-p", "no:cacheprovider", f"--rootdir={root}",
             "-c", os.path.join(root, "pytest.ini")] + (["--collect-only"] if collect_only else [])
    with contextlib.redirect_stdout(stdout or sys.stdout):
        pytest.main(args, plugins=[outcomes, *plugins])
    return outcomes


def points_split(outcomes: Outcomes, tasks) -> dict:
    """How each task's points are split: {task: [[test, points, graded cases or []], ...]}, a test's cases
    together (they share its points), in the order pytest collected them."""
    split = {t: [] for t in tasks}
    rows = {}
    for nodeid, task in outcomes.task_of.items():
        group = outcomes.group_of.get(nodeid, nodeid)
        if group not in rows:
            rows[group] = [group.split("::")[-1], outcomes.points_of.get(nodeid, 0), []]
            split[task].append(rows[group])
        if "[" in nodeid:
            rows[group][2].append(nodeid[nodeid.index("[") + 1:-1])
    return split


def points_line(tests: list) -> str:
    """A handout's line for one task's split: `test_a` 3, `test_b[prefix, prompt]` 4, ..."""
    def cases_of(cases):   # a few named cases by name, many by their number
        return "" if not cases else f"[{', '.join(cases)}]" if len(cases) <= 2 else f" ({len(cases)} cases)"
    return ", ".join(f"`{name}{cases_of(cases)}` {points:g}" if not cases or len(cases) <= 2 else
                     f"`{name}`{cases_of(cases)} {points:g}" for name, points, cases in tests)


def score(outcomes: Outcomes, tasks) -> dict:
    """Points per task, by intent: each graded test carries its points on its marker
    (`@pytest.mark.a2(points=4)`), the cases of a parametrised test share them equally, and a task's tests'
    points add up to the task's (POINTS; an error otherwise). A task earns the points of what passed. A
    task with no test collected (a marker gone, a file that failed to import) scores 0 and says why."""
    report = {"tasks": {}, "total": 0.0, "max": sum(POINTS[t] for t in tasks)}
    errors = list(outcomes.errors)
    for t in tasks:
        ids = sorted(n for n, task in outcomes.task_of.items() if task == t)
        passed = [n for n in ids if n in outcomes.passed and n not in outcomes.reason]
        failures = [{"test": n, "reason": outcomes.reason.get(n, "did not run")} for n in ids if n not in passed]
        groups = {}
        for n in ids:
            groups.setdefault(outcomes.group_of.get(n, n), []).append(n)
        carried = sum(outcomes.points_of.get(g[0], 0) for g in groups.values())
        if ids and abs(carried - POINTS[t]) > 1e-9:
            errors.append(f"{t}'s tests carry {carried:g} points but the task is worth {POINTS[t]}: "
                          "fix the points on its markers")
        earned = sum(outcomes.points_of.get(g[0], 0) * sum(n in passed for n in g) / len(g) for g in groups.values())
        points = round(min(earned, POINTS[t]), 2) if ids else 0.0
        report["tasks"][t] = {"title": TITLES[t], "points": points, "max": POINTS[t], "passed": len(passed),
                              "failed": len(failures), "failures": failures}
        report["total"] = round(report["total"] + points, 2)
    missing = [t for t in tasks if not report["tasks"][t]["passed"] + report["tasks"][t]["failed"]]
    errors += [f"no test of {t} was collected (marker {t.lower()})" for t in missing]
    if errors:
        report["errors"] = errors
    return report


def format_report(report: dict) -> str:
    """The grade as a table a student reads: one line per task, then the total and any errors."""
    lines = [f"{'task':<5} {'passed':>6} {'failed':>6} {'points':>13}  what"]
    for t, r in report["tasks"].items():
        lines.append(f"{t:<5} {r['passed']:>6} {r['failed']:>6} {r['points']:>6.2f} / {r['max']:<4}  {r['title']}")
    lines.append(f"{'total':<19} {report['total']:>7.2f} / {report['max']}")
    lines += [f"error: {e}" for e in report.get("errors", [])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The ladder's check (teachers): which regions each graded test runs

class RegionTrace:
    """A pytest plugin that records which solution regions each test runs, set-up and teardown included.
    A graded test must run a region of its own task (else removing that task's code could not fail it)
    and no region outside the tasks its task builds on (else BUILDS_ON would be wrong); see trace_regions.

    sys.settrace calls back on every Python call; only functions whose lines overlap a region get a line
    tracer, so the cost is one dictionary lookup per call elsewhere."""

    def __init__(self, root: str, regions: list[Region]):
        self.spans = {}                                   # real path → [(first line, last line, region id)]
        for r in regions:
            path = os.path.realpath(os.path.join(root, r.path))
            self.spans.setdefault(path, []).append((r.begin + 1, r.end - 1, r.id))   # the code between the markers
        self.hits, self.current = {}, None
        self._by_code, self._by_file = {}, {}

    def _spans_of(self, code):
        path = self._by_file.get(code.co_filename)
        if path is None:
            path = self._by_file[code.co_filename] = os.path.realpath(code.co_filename)
        lines = [line for _, _, line in code.co_lines() if line is not None]
        if path not in self.spans or not lines:
            return None
        return [s for s in self.spans[path] if s[0] <= max(lines) and s[1] >= min(lines)] or None

    def _on_call(self, frame, event, arg):
        code = frame.f_code
        if code not in self._by_code:
            self._by_code[code] = self._spans_of(code)
        return self._on_line if self._by_code[code] else None

    def _on_line(self, frame, event, arg):
        if event == "line":
            for first, last, rid in self._by_code[frame.f_code]:
                if first <= frame.f_lineno <= last:
                    self.hits[self.current].add(rid)
        return self._on_line

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid
        self.hits.setdefault(nodeid, set())
        sys.settrace(self._on_call)

    def pytest_runtest_logfinish(self, nodeid, location):
        sys.settrace(None)


def trace_regions(root: str) -> dict:
    """Run every graded test of the project at root once, traced: {test id: {"task", "regions", "passed"}}."""
    tracer = RegionTrace(root, all_regions(root))
    outcomes = run_tests(root, list(POINTS), plugins=[tracer])
    return {n: {"task": t, "regions": sorted(tracer.hits.get(n, ())), "passed": n in outcomes.passed and
                n not in outcomes.reason} for n, t in outcomes.task_of.items()}


# ----------------------------------------------------------------------------------------------
# The Gradescope autograder (make_autograder.py builds it; course/gradescope_run.py runs inside it)

GRADESCOPE_RUNNER = "course/gradescope_run.py"


def gradescope_results(report: dict) -> dict:
    """grade.py's report in Gradescope's results.json format: the score, and a test entry per task with
    its points, its maximum and, where tests failed, which and why."""
    tests = []
    for t, r in report["tasks"].items():
        lines = [f"{r['passed']} passed, {r['failed']} failed"] + [f"{f['test']}: {f['reason']}" for f in r["failures"]]
        tests.append({"name": f"{t}: {r['title']}", "score": r["points"], "max_score": r["max"],
                      "output": "\n".join(lines), "visibility": "visible"})
    out = {"score": report["total"], "tests": tests, "visibility": "visible"}
    if report.get("errors"):
        out["output"] = "\n".join(f"error: {e}" for e in report["errors"])
    return out


def build_autograder(root: str, out_zip: str, tasks) -> list[str]:
    """Write a Gradescope autograder zip for these tasks: setup.sh (the runtime requirements), run_autograder
    (which runs course/gradescope_run.py), and teacher/, the teacher's copy of every file in TEACHER_FILES
    and the task list. Returns the zip's names. Refuses an existing out_zip."""
    import zipfile
    if os.path.exists(out_zip):
        raise AssignmentError(f"{out_zip} exists: remove it or give another --out")
    missing = [f for f in (*TEACHER_FILES, GRADESCOPE_RUNNER, "requirements.txt") if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise AssignmentError(f"{missing[0]} is missing from {root}: build the autograder from the solution repository")
    setup = ("#!/usr/bin/env bash\n# Gradescope runs this once, when it builds the image\nset -euo pipefail\n"
             "apt-get install -y python3 python3-pip >/dev/null 2>&1 || true\n"
             "python3 -m pip install -r /autograder/source/requirements.txt pytest\n")
    run = ("#!/usr/bin/env bash\n# Gradescope runs this for every submission (as /autograder/run_autograder); "
           "AUTOGRADER_ROOT\n# (default /autograder) and PYTHON (default python3) let a test run it elsewhere\n"
           "set -euo pipefail\nexec \"${PYTHON:-python3}\" \"${AUTOGRADER_ROOT:-/autograder}/source/gradescope_run.py\"\n")
    tmp = out_zip + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in (("setup.sh", setup), ("run_autograder", run)):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16   # executable, as Gradescope needs
            z.writestr(info, text)
        z.write(os.path.join(root, GRADESCOPE_RUNNER), "gradescope_run.py")
        z.write(os.path.join(root, "requirements.txt"), "requirements.txt")
        for f in TEACHER_FILES:
            z.write(os.path.join(root, f), f"teacher/{f}")
        z.writestr(f"teacher/{ASSIGNMENT_FILE}", json.dumps({"tasks": list(tasks)}) + "\n")
        names = z.namelist()
    os.replace(tmp, out_zip)
    return names

