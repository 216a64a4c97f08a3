"""
grade.py — grade the course assignments: run each task's tests (pytest markers a1 … a8) and give points.

    python course/grade.py                  # the tasks this copy was made for (assignment.json), or all of them
    python course/grade.py --tasks A2,A8    # these tasks only
    python course/grade.py --points         # how each task's points are split among its tests (runs nothing)
    python course/grade.py --json           # one JSON object on stdout (Gradescope's results.json is made
                                     #   from it by the autograder: course/make_autograder.py):
                                     #   {"tasks": {"A1": {"points": x, "max": y, "passed": n, "failed": m,
                                     #    "failures": [{"test": ..., "reason": ...}], ...}}, "total": ..., "max": ...}

Each graded test carries its points on its marker (`@pytest.mark.a2(points=4)`); the cases of a parametrised
test share them, a task's tests add up to its points (assignments.POINTS), and a task earns what passed. The tests
run in this process, once for all the tasks asked for; with --json pytest's own lines go to stderr, so
stdout holds the JSON alone. Exit status (what GitHub Classroom reads): 0 when every graded test passed, 1
otherwise (a bad command line too, after one line saying what is wrong).
"""
import json
import os
import sys

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from course.assignments import (POINTS, assigned_tasks, format_report, parse_tasks, points_line, points_split,  # noqa: E402
                                run_tests, score)
from data.checks import Parser  # noqa: E402
from prefixgpt.cli import main_guard  # noqa: E402



def main(argv) -> int:
    parser = Parser(description="Run each assignment task's tests and give points.")
    parser.add_argument("--tasks", help="comma-separated tasks, e.g. A1,A2 (default: this copy's assignment.json, "
                                        "or every task)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--points", action="store_true", help="only say how each task's points are split "
                                                                "among its graded tests; run nothing")
    args = parser.parse_args(argv)
    tasks = parse_tasks(args.tasks) if args.tasks is not None else assigned_tasks(ROOT)   # bad: one line
    if args.points:
        with open(os.devnull, "w") as quiet:   # pytest's list of what it collected: not for this output
            split = points_split(run_tests(ROOT, tasks, stdout=quiet, collect_only=True), tasks)
        print(json.dumps(split, indent=2) if args.json else "\n".join(
            f"{t} ({POINTS[t]} points): {points_line(split[t])}" for t in tasks))
        return 0
    outcomes = run_tests(ROOT, tasks, stdout=sys.stderr if args.json else sys.stdout)
    report = score(outcomes, tasks)
    print(json.dumps(report, indent=2) if args.json else "\n" + format_report(report))
    ok = "errors" not in report and all(r["failed"] == 0 for r in report["tasks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main_guard(main))
