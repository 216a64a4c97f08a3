"""
make_assignment.py — make a student copy of this project for some of the course's tasks.

    python course/make_assignment.py --tasks A1,A2 --out ../course-a1a2

The copy holds the files git tracks, less the solution-only ones (assignments.SOLUTION_ONLY: this script,
the reference-output writer, the teacher's tests). Each solution region of a selected task becomes
`raise NotImplementedError("A2.1: <hint>")`; every other region keeps its code without its markers. Nothing
is written when a marker is unmatched or names an unknown task, when --out is a folder that is not empty, or
when a file of the copy would not compile; each of these is one line. ASSIGNMENTS.md is the handout.
"""
import os
import sys

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from course.assignments import TITLES, make_copy, parse_tasks  # noqa: E402
from data.checks import Parser  # noqa: E402
from prefixgpt.cli import main_guard  # noqa: E402



def main(argv):
    parser = Parser(description="Make a student copy of this project with the chosen tasks' solutions removed.")
    parser.add_argument("--tasks", required=True, help="comma-separated tasks, e.g. A1,A2 (A1 … A8)")
    parser.add_argument("--out", required=True, help="a new or empty folder for the copy")
    args = parser.parse_args(argv)
    stubbed = make_copy(ROOT, args.out, parse_tasks(args.tasks))   # a bad task, marker or folder: one line
    for task, ids in stubbed.items():
        print(f"{task} ({TITLES[task]}): {', '.join(ids)} removed")
    print(f"the student copy is in {args.out}; students run `python course/grade.py` there")


if __name__ == "__main__":
    main_guard(main)
