"""Shared test helpers: the repo root, running a script as a user would, tiny models, a code-carrying file.

Sizes come from the tiny_config fixture; tests that need another size say so where they build it.
Tests marked `slow` train or run scripts end to end; `pytest -m "not slow"` skips them (under 30 s).
"""
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, check=True, env=None, timeout=300):
    """Run a project script from the repo root with this Python; returns the CompletedProcess."""
    res = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env=env)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


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
