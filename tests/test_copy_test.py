"""experiments/copy_test.py: the loss of a random span's second writing against its first, on a model
that copies (hand-made: it reads the token one span back) and on one that does not (a random GPT)."""
import math

import pytest
import torch

from conftest import run
from experiments import copy_test
from model import GPT, GPTConfig
from prefixgpt.checkpoint import save_checkpoint


class Copier(torch.nn.Module):
    """After the separator, puts all its mass on the token one span back: a perfect induction head."""

    def __init__(self, vocab: int, separator: int):
        super().__init__()
        self.vocab, self.separator = vocab, separator

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)                     # (1, T, V): uniform before the separator
        s = x[0].tolist().index(self.separator)
        for t in range(s, x.shape[1]):
            logits[0, t, x[0, t - s]] = 50.0
        return logits, None


def test_span_losses_read_nothing_from_a_first_span_and_everything_from_a_copied_one():
    line = [300, 301, 302, 303, 304, 255, 300, 301, 302, 303, 304, 198]
    first, second = copy_test.span_losses(Copier(2048, 255), line, 255)
    assert first == pytest.approx(math.log(2048)) and second == pytest.approx(0.0, abs=1e-6)


def test_copy_test_says_yes_for_a_copier_and_no_for_a_random_base(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = tmp_path / "base.pt"
    save_checkpoint(str(path), GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=16)), "byte")
    out = run("experiments/copy_test.py", f"--base={path}", "--lines=20").stdout
    assert "20 random spans written twice" in out and "copies: no" in out, out
    monkeypatch.setattr(copy_test, "load_model", lambda base, device: (Copier(256, 31), {"tokenizer": "byte"}))
    got = copy_test.main(["--lines=20"])
    assert got["second"] < 1e-3 and got["first"] == pytest.approx(math.log(256))
    assert "copies: yes" in capsys.readouterr().out
