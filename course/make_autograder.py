"""
make_autograder.py — build a Gradescope autograder for some of the course's tasks.

    python course/make_autograder.py --tasks A1,A2 --out autograder.zip      # or: make autograder TASKS=A1,A2

The zip holds what Gradescope asks for (setup.sh, run_autograder) and the teacher's copy of every file that
decides a grade (assignments.TEACHER_FILES: the graded tests, their reference outputs, pytest.ini, the
grader) with the task list. For each submission, run_autograder (course/gradescope_run.py) copies the
student's project, puts the teacher's files back over it, runs `course/grade.py --json` and writes
Gradescope's results.json: a test entry per task, with its points and its failures. Upload the zip as the
assignment's autograder; students upload their whole copy (made by make_assignment.py).
"""
import os
import sys

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from course.assignments import POINTS, build_autograder, parse_tasks  # noqa: E402
from data.checks import Parser  # noqa: E402
from prefixgpt.cli import main_guard  # noqa: E402


def main(argv):
    parser = Parser(description="Build a Gradescope autograder zip for the chosen tasks.")
    parser.add_argument("--tasks", required=True, help="comma-separated tasks, e.g. A1,A2 (A1 … A8)")
    parser.add_argument("--out", default="autograder.zip", help="the zip to write (refused if it exists)")
    args = parser.parse_args(argv)
    tasks = parse_tasks(args.tasks)
    names = build_autograder(ROOT, args.out, tasks)   # a bad task or an existing zip: one line
    print(f"{args.out}: {len(names)} files, grading {', '.join(tasks)} "
          f"({sum(POINTS[t] for t in tasks)} points); upload it as the Gradescope assignment's autograder")


if __name__ == "__main__":
    main_guard(main)
