"""probe.py and its two functions (analysis.layer_features, analysis.linear_probe): the features are the
model's own states, the probe finds a class the features carry and does not find one they do not, and
probe.py prints a row per layer or refuses a task that is not classification in one line."""
import json

import pytest
import torch

from conftest import one_line_error, run
from model import GPT, GPTConfig
from prefixgpt.analysis import layer_features, linear_probe
from prefixgpt.checkpoint import save_checkpoint


def test_layer_features_end_in_the_states_the_model_predicts_from(tiny_model):
    idx = torch.randint(0, tiny_model.config.vocab_size, (1, 9))
    feats = layer_features(tiny_model, idx)                                   # (n_layer + 2, 2, C)
    assert feats.shape == (tiny_model.config.n_layer + 2, 2, tiny_model.config.n_embd)
    h, _ = tiny_model.trunk(tiny_model.transformer.wte(idx))                  # after ln_f: (1, T, C)
    torch.testing.assert_close(feats[-1, 0], h[0, -1])
    torch.testing.assert_close(feats[-1, 1], h[0].mean(0))
    emb = tiny_model.transformer.wte(idx) + tiny_model.transformer.wpe(torch.arange(9))
    torch.testing.assert_close(feats[0, 1], emb[0].mean(0))


def test_the_probe_reads_a_class_the_features_carry_and_not_one_they_do_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = (x[:, 3] - 0.5 * x[:, 7] > 0).long()                                 # a linear rule of two features
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randint(0, 2, (600,), generator=g)                          # labels the features do not hold
    assert 0.35 < linear_probe(x[:400], noise[:400], x[400:], noise[400:]) < 0.65


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base.pt"
    save_checkpoint(str(path), GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=16)), "byte")
    return str(path)


def test_probe_py_prints_every_layer_and_a_task_whose_answer_is_in_the_input_is_read(tmp_path, base):
    words = {" positive": ["great", "fine", "warm"], " negative": ["dull", "flat", "cold"]}
    rows = [{"prompt": f"a {w} film Sentiment:", "completion": label}
            for i in range(20) for label, ws in words.items() for w in ws[i % 3:i % 3 + 1]]
    write_rows(tmp_path / "train.jsonl", rows)
    write_rows(tmp_path / "test.jsonl", rows[:12])
    out = run("experiments/probe.py", f"--base={base}", f"--data_dir={tmp_path}").stdout
    for name in ("embeddings", "block 1", "block 2", "final LayerNorm"):
        assert name in out
    assert "majority class alone: 50.0%" in out
    # the mean of the embeddings holds the word itself: a probe reads the label from it
    assert "100.0%" in out.split("embeddings")[1].splitlines()[0], out


def test_probe_py_refuses_a_task_that_is_not_classification_in_one_line(tmp_path, base):
    write_rows(tmp_path / "train.jsonl", [{"prompt": f"name[{i}] ||", "completion": f" Place {i}."} for i in range(30)])
    write_rows(tmp_path / "test.jsonl", [{"prompt": "name[x] ||", "completion": " Place x."}])
    res = run("experiments/probe.py", f"--base={base}", f"--data_dir={tmp_path}", check=False)
    one_line_error(res, "30 distinct completions", "classification")
