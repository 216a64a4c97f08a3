"""bench.py: the prefix suite runs end to end and prints every comparison; its memory accounting is exact.
No test here reads a time: speed is bench.py's business, measured as ratios in one run."""
import pytest
import torch

from checks import bench
from conftest import run
from prefix import PrefixTuning, freeze
from prefixgpt.decoding import generate
from prefixgpt.optim import make_adamw


def test_memory_accounting_counts_exactly_what_prefix_tuning_holds(tiny_model, tiny_config):
    """Gradients: the prefix's numbers only; AdamW: two moments per number (plus a step count per tensor);
    saved activations: something, but no parameter of the frozen base."""
    model = freeze(tiny_model).train()
    prefix = PrefixTuning(tiny_config, 4)
    opt = make_adamw(prefix, 1e-3, 0.0)
    x = torch.randint(0, tiny_config.vocab_size, (2, 8))
    m = bench.memory_bytes([model, prefix], opt, lambda: model(x, x, prefix_kv=prefix(model))[1], "cpu")
    n = prefix.prefix.numel()
    assert m["params"] == 4 * (n + sum(p.numel() for p in model.parameters()))
    assert m["grads"] == 4 * n
    assert m["optimizer"] == 2 * 4 * n + opt.state[prefix.prefix]["step"].element_size()
    assert 0 < m["activations"] < m["params"]


def test_training_flops_follow_the_formula_in_its_docstring():
    c = bench.GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=16, vocab_size=10)
    assert bench.train_flops_per_token(c) == 6 * (2 * (12 * 64 + 2 * 16 * 8) + 8 * 10)


@pytest.mark.slow
def test_prefix_suite_runs_end_to_end_in_quick_mode():
    out = run("checks/bench.py", "--suite=prefix", "--quick", timeout=600).stdout
    for line in ("fp32 matmul peak of this machine",
                 "=== toy: 4 layers x 4 heads x 128",
                 "prefix tuning / full fine-tuning: x",
                 "prefix tuning / PEFT prefix tuning: x",
                 "with the cache / without it: x",
                 "with the cache / transformers generate: x",
                 "one mixed batch / one after another: x",
                 "one mixed batch / transformers one after another: x",
                 "4. where the time goes: one prefix-tuning step",
                 "one decoding step, batch 1, with the cache",
                 "Self CPU",
                 "6. activation checkpointing",
                 "checkpointing's time: prefix x"):
        assert line in out, line
    for name in ("prefix tuning, checkpointed", "full fine-tuning, checkpointed"):
        assert any(row.startswith(name + " ") for row in out.splitlines()), name
    for name in ("prefix tuning", "full fine-tuning", "PEFT prefix tuning"):   # a row of the memory table each
        assert any(row.startswith(name + " ") for row in out.splitlines()), name


@pytest.mark.parametrize("fits_up_to", [0, 1, 5, 64, 91, 102, 1024, 5000])
def test_the_largest_batch_search_finds_the_limit_exactly(fits_up_to, monkeypatch):
    """bench's section 5 on a GPU: doubling then halving the interval, with out-of-memory as 'no'."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    tried = []

    def make_step(batch):
        def step():
            tried.append(batch)
            if batch > fits_up_to:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return step
    assert bench.largest_batch(make_step, limit=1024) == min(fits_up_to, 1024)
    assert len(tried) <= 2 * 11   # about two probes per doubling, never a linear scan


def test_transformers_generate_with_the_prefix_as_its_cache_decodes_what_ours_does():
    """The bench's decoding comparison is like for like: the same weights, the same prefix, the same
    greedy tokens (a prefix large enough to change them)."""
    transformers, _ = bench.optional_hf()
    model, hf = bench.build_models("toy", 64, "cpu", transformers)
    kv = [(50 * k, 50 * v) for k, v in bench.random_prefix_kv(model.config, 10, "cpu", seed=2)]
    x = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    ours = generate(model, x, 12, temperature=0, prefix_kv=kv)[0, 8:].tolist()
    theirs = hf.generate(x, past_key_values=bench.hf_cache(transformers, kv), attention_mask=torch.ones(1, 18, dtype=torch.long),
                         max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    plain = generate(model, x, 12, temperature=0)[0, 8:].tolist()
    assert ours == theirs != plain


def test_checkpointing_holds_less_for_the_backward_and_estimates_more_sequences():
    w = bench.Workload(2, 16, 32, 2, 2)
    model = bench.GPT(bench.GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=32, vocab_size=64))
    rt = bench.setup_runtime("cpu", "float32", 0)
    ck = bench.checkpointing(model, w, rt, rounds=1)
    for name in ("prefix tuning", "full fine-tuning"):
        on, off = ck[name + ", checkpointed"], ck[name]
        assert on["activations"] < off["activations"] and on["fits_estimate"] > off["fits_estimate"], name
        assert on["params"] + on["grads"] + on["optimizer"] == off["params"] + off["grads"] + off["optimizer"]
    assert ck["prefix tuning"]["grads"] < ck["full fine-tuning"]["grads"]     # a frozen base has no weight grads

