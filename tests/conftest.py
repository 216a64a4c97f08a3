"""Shared test helpers: the repo root, running a script as a user would, tiny models, a code-carrying file.

Sizes come from the tiny_config fixture; tests that need another size say so where they build it.
Tests marked `slow` train or run scripts end to end; `pytest -m "not slow"` skips them (under 30 s).
"""
import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist): each worker, and each process it starts,
    # then computes on one thread, instead of every one of them spreading over both cores and the
    # threads waiting on each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run(script, *args, check=True, env=None, timeout=300, fresh=False):
    """Run a project script from the repo root as `python script args...` would; returns a CompletedProcess
    (returncode, stdout, stderr).

    In this process by default: the script's file runs as __main__ with sys.argv set, its output captured,
    its SystemExit turned into the return code. That is what a subprocess shows too (main_guard's one-line
    errors and exit codes), without paying Python's and torch's start-up for every call. fresh=True, or an
    env, runs a real subprocess: for what only a new process shows (signals, the environment, imports)."""
    if fresh or env is not None:
        res = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, env=env)
    else:
        res = run_here(script, list(args))
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def run_here(script, args):
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, cwd, path = sys.argv, os.getcwd(), list(sys.path)
    try:
        os.chdir(ROOT)
        sys.argv = [script, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(cwd)
    return subprocess.CompletedProcess([sys.executable, script, *args], code, out.getvalue(), err.getvalue())


def one_line_error(res, *needles):
    """The run failed with exactly one line on stderr (no traceback) that contains every needle."""
    assert res.returncode != 0, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr
    return res.stderr


class RunsCode:
    """Pickles to a call of os.makedirs(marker): a file holding it runs code when unpickled unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def tiny_config():
    # small enough for milliseconds per forward, big enough to have several heads and layers
    return GPTConfig(block_size=32, vocab_size=61, n_layer=3, n_head=4, n_embd=32, dropout=0.0)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


# -- torchrun: several processes of one script ------------------------------------------------------------

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="finds the torchrun worker processes through /proc (Linux)")


def start_torchrun(script, *args, log, nproc=2):
    """`torchrun --standalone --nproc_per_node=nproc script args` in the repo root, one thread a process.
    Output goes to a file, not a pipe: torchrun starts each worker in a session of its own, so after a
    timeout a stuck worker would keep a pipe open and the test would hang instead of failing."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", script, *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def torchrun(script, *args, log_path, nproc=2, timeout=240):
    """Run start_torchrun to the end: (exit status, what it printed). Every process still running after
    timeout seconds whose command line holds this run's --out_dir (a test's own folder) is killed."""
    out_dir = next(a for a in args if a.startswith("--out_dir="))
    with open(log_path, "w") as log:
        proc = start_torchrun(script, *args, log=log, nproc=nproc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_processes_mentioning(out_dir)
            proc.kill()
            proc.wait()
            pytest.fail(f"the {nproc}-process run did not finish in {timeout} s:\n" + open(log_path).read())
    return proc.returncode, open(log_path).read()


def torchrun_then_signal_rank_1(script, *args, log_path, once):
    """start_torchrun, wait until the output holds `once`, send SIGTERM to the rank-1 worker (found through
    /proc by this run's --out_dir) and wait for the run to end. Returns what it printed. Every rank must
    stop: a rank that leaves alone leaves the other waiting in an all-reduce, and the run hangs."""
    import time
    out_dir = next(a for a in args if a.startswith("--out_dir=")).split("=", 1)[1]
    with open(log_path, "w") as log:
        proc = start_torchrun(script, *args, log=log)
        try:
            deadline = time.time() + 120
            while once not in open(log_path).read() and time.time() < deadline:
                time.sleep(0.2)
            rank1 = [pid for pid in worker_pids(out_dir) if b"RANK=1\0" in read_proc(pid, "environ")]
            assert len(rank1) == 1, open(log_path).read()
            os.kill(rank1[0], signal.SIGTERM)
            proc.wait(timeout=120)
        except (subprocess.TimeoutExpired, AssertionError):
            kill_processes_mentioning(out_dir)
            proc.kill()
            raise
    return open(log_path).read()


def read_proc(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def worker_pids(text):
    """Processes whose command line contains text (a launcher and its workers)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in read_proc(pid, "cmdline") and pid != str(os.getpid()):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def kill_processes_mentioning(text):
    for pid in worker_pids(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
