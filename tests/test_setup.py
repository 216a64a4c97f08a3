"""The Makefile's set-up: pip installs requirements.txt without its bytecode pass, and the WARM line that
compiles what the scripts import instead still runs (a module renamed in a later torch or matplotlib would
otherwise stop `make demo` at its set-up)."""
import os
import re

import pytest
import subprocess
import sys

from conftest import ROOT


def makefile():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return f.read().replace("\\\n", " ")   # make joins a line ending in a backslash with the next


def test_requirements_install_skips_pips_bytecode_and_then_warms_the_imports():
    text = makefile()
    install = re.search(r"^\$\(VENV\)/\.installed:.*?\n((?:\t.*\n)+)", text, re.M).group(1)
    steps = [line.strip() for line in install.splitlines()]
    pip = next(i for i, s in enumerate(steps) if "pip install" in s and "requirements.txt" in s)
    assert "--no-compile" in steps[pip]
    assert steps[pip + 1] == "env -u PYTHONDONTWRITEBYTECODE $(PY) -c '$(WARM)'"   # right after the install


@pytest.mark.slow
def test_the_warm_imports_run():
    warm = re.search(r"^WARM := (.*)$", makefile(), re.M).group(1)
    res = subprocess.run([sys.executable, "-c", warm], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
    assert res.returncode == 0, res.stderr[-2000:]
