"""The course assignments (ASSIGNMENTS.md): each task's outputs against the reference file, the properties
that need no reference, the handout's questions, and the grader's bookkeeping.

A test marked a1 … a8 grades that task (grade.py); it may also run code of the tasks the task builds on
(assignments.BUILDS_ON). Tests without a task marker check the handout's other answers and the tools;
they are not graded.

References: tests/reference/assignments.npz, written by tests/make_references.py from the solution code
(fp32, CPU, a tiny fixed model). It stores the inputs beside the outputs, so nothing here depends on
torch's random number generator. Float outputs are compared at atol 1e-5 / rtol 1e-4 unless a test
says otherwise: far above fp32 rounding on these sizes, far below any real mistake.
"""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from course import assignments
from data.tasks import TaskExample, collate
from model import (GPT, GPTConfig, attention_mask, attention_weights, prefix_attention_reference,
                   token_positions)
from prefix import PrefixTuning, PromptTuning, batch_prefixes, count_parameters, freeze
from prefixgpt.analysis import attention_maps, average_prefix_mass, nearest_tokens, plot_mass, prefix_mass
from prefixgpt.decoding import KVCache, generate, step
from prefixgpt.methods import Adapter, LoRALinear

REF = np.load(os.path.join(ROOT, "tests", "reference", "assignments.npz"))
ATOL, RTOL = 1e-5, 1e-4


def ref(name) -> torch.Tensor:
    return torch.from_numpy(REF[name])


def close(actual, name, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual.detach(), ref(name), atol=atol, rtol=rtol)


def pairs(kv: torch.Tensor) -> list:
    """(n_layer, 2, B, nh, P, hd) → n_layer (key, value) pairs."""
    return [(layer[0], layer[1]) for layer in kv]


def reference_model(fast=False) -> GPT:
    model = GPT(GPTConfig(**json.loads(str(REF["config"])))).eval()
    model.load_state_dict({k[len("model."):]: ref(k) for k in REF.files if k.startswith("model.")})
    model.fast_attention = fast
    return model


# -- A1: attention with a prefix --------------------------------------------------------------------

@pytest.mark.a1(points=3)
def test_a1_mask_weights_output_and_positions_match_the_reference():
    q, k, v, pk, pv, mask = (ref(f"a1.{n}") for n in ("q", "k", "v", "pk", "pv", "prefix_mask"))
    assert torch.equal(attention_mask(5, 3, mask, "cpu"), ref("a1.mask"))                 # booleans: exact
    close(attention_weights(q, k, pk, mask), "a1.weights")                               # atol 1e-5, rtol 1e-4
    close(prefix_attention_reference(q, k, v, pk, pv, mask), "a1.out")                   # atol 1e-5, rtol 1e-4
    assert torch.equal(token_positions(4, 3, mask, "cpu"), ref("a1.positions"))          # integers: exact


@pytest.mark.a1(points=2)
def test_a1_logits_after_a_prefix_match_the_reference():
    logits, _ = reference_model()(ref("a1.x"), prefix_kv=pairs(ref("a1.prefix")))
    close(logits, "a1.logits")                                                           # atol 1e-5, rtol 1e-4


@pytest.mark.a1(points=1)
def test_is_causal_true_is_wrong_once_there_is_a_prefix():
    """SDPA's is_causal=True aligns the triangle top-left: query 0 then sees key 0 alone, a prefix slot,
    instead of all P slots and itself. The bottom-right mask (attention_mask) is the right one."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(3))
    pk, pv = (torch.randn(1, 2, 3, 8, generator=g) for _ in range(2))
    right = prefix_attention_reference(q, k, v, pk, pv)
    wrong = F.scaled_dot_product_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), is_causal=True)
    assert (right - wrong).abs().max() > 0.1                     # a different output, not a rounding difference
    torch.testing.assert_close(wrong[:, :, 0], pv[:, :, 0], atol=1e-6, rtol=0)   # query 0 saw prefix slot 0 only
    explicit = F.scaled_dot_product_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2),
                                              attn_mask=attention_mask(4, 3, None, "cpu"))
    torch.testing.assert_close(right, explicit, atol=1e-6, rtol=0)


@pytest.mark.a1(points=1)
def test_a_prefix_scales_but_cannot_reorder_attention_among_the_inputs_tokens(tiny_model, tiny_config):
    """Petrov, Torr & Bibi (ICLR 2024): per query, the weights over the input's own tokens with a prefix are
    (1 − the prefix's mass) × the weights without it. Exact up to float rounding (atol 1e-6), for one
    attention call with padded prefixes and for every layer of a model."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 2, 5, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g)
    pk = torch.randn(3, 2, 4, 8, generator=g)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    with_prefix, without = attention_weights(q, k, pk, mask), attention_weights(q, k)
    mass = with_prefix[..., :4].sum(-1, keepdim=True)                                      # (B, nh, T, 1)
    torch.testing.assert_close(with_prefix[..., 4:], (1 - mass) * without, atol=1e-6, rtol=0)
    assert mass[:2].min() > 0.01 and mass[:2].max() < 0.99 and torch.all(mass[2] == 0)   # both sides matter

    x = torch.randint(0, tiny_config.vocab_size, (2, 7), generator=g)
    prefix = [(torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 4, 3, 8, generator=g)) for _ in range(3)]
    for layer in attention_maps(tiny_model, x, prefix):
        m = layer.prefix_mass[..., None]
        torch.testing.assert_close(layer.with_prefix[..., 3:], (1 - m) * layer.without_prefix, atol=1e-6, rtol=0)


# -- A2: the prefix module ------------------------------------------------------------------------------

@pytest.mark.a2(points=6)
def test_a2_reparameterised_prefix_and_its_fold_match_the_reference():
    config = GPTConfig(**json.loads(str(REF["config"])))
    prefix = PrefixTuning(config, 3, reparam=True, reparam_hidden=8)
    prefix.load_state_dict({k[len("a2.state."):]: ref(k) for k in REF.files if k.startswith("a2.state.")})
    close(prefix.prefix_tensor(), "a2.prefix_tensor")                                     # atol 1e-5, rtol 1e-4
    folded = prefix.fold()
    assert isinstance(folded, PrefixTuning) and not folded.reparam and folded is not prefix
    assert [n for n, _ in folded.named_parameters()] == ["prefix"] and folded.prefix.requires_grad
    close(folded.prefix, "a2.prefix_tensor")                                              # atol 1e-5, rtol 1e-4


# -- A3: prompt tuning ------------------------------------------------------------------------------------

@pytest.mark.a3(points=4)
def test_a3_soft_prompt_keys_values_and_nearest_tokens_match_the_reference():
    model = reference_model()
    prompt = PromptTuning(model.config, 3)
    with torch.no_grad():
        prompt.soft_embeds.copy_(ref("a3.soft_embeds"))
    kv = prompt(model)
    assert len(kv) == model.config.n_layer and kv[0][0].shape == (1, 2, 3, 8)
    close(torch.stack([torch.stack(pair) for pair in kv]), "a3.kv")                     # atol 1e-5, rtol 1e-4
    ids, sims = nearest_tokens(ref("a3.soft_embeds"), model.transformer.wte.weight, k=2)
    assert torch.equal(ids, ref("a3.nearest_ids"))
    close(sims, "a3.nearest_sims")                                                        # atol 1e-5, rtol 1e-4


@pytest.mark.a3(points=2)
def test_a3_a_prompt_made_of_tokens_reads_back_as_those_tokens(tiny_model, tiny_config):
    words = [5, 17, 42, 3]
    prompt = PromptTuning(tiny_config, 4).init_from_tokens(tiny_model, words)
    ids, sims = nearest_tokens(prompt.soft_embeds, tiny_model.transformer.wte.weight, k=3)
    assert ids[:, 0].tolist() == words
    torch.testing.assert_close(sims[:, 0], torch.ones(4), atol=1e-6, rtol=0)
    assert torch.all(sims[:, 1:] < 1 - 1e-3) and torch.all(sims[:, :-1] >= sims[:, 1:])   # best first
    with pytest.raises(ValueError, match="3 init tokens for a prompt of n_prefix=4"):
        PromptTuning(tiny_config, 4).init_from_tokens(tiny_model, words[:3])


@pytest.mark.a3(points=1)
def test_the_nearest_token_readout_is_not_what_the_prompt_does():
    """Two soft prompts with the same nearest tokens, exactly, that the model reads differently: cosine
    similarity ignores a vector's length, the model does not (its first LayerNorm sees E + position)."""
    model = reference_model()
    a = PromptTuning(model.config, 3).init_from_tokens(model, [4, 9, 15])
    b = PromptTuning(model.config, 3)
    with torch.no_grad():
        b.soft_embeds.copy_(a.soft_embeds * 0.1)
    table = model.transformer.wte.weight
    assert torch.equal(nearest_tokens(a.soft_embeds, table, 3)[0], nearest_tokens(b.soft_embeds, table, 3)[0])
    x = ref("a1.x")
    pa = torch.log_softmax(model(x, prefix_kv=a(model))[0], -1)
    pb = torch.log_softmax(model(x, prefix_kv=b(model))[0], -1)
    assert (pa.exp() * (pa - pb)).sum(-1).mean() > 1e-3                     # KL in nats, per position
    assert (pa.argmax(-1) != pb.argmax(-1)).any()                            # some greedy prediction changes


# -- A4: mixed-prefix batches -----------------------------------------------------------------------------

@pytest.mark.a4(points=5)
def test_a4_batch_prefixes_matches_the_reference():
    kvs = [pairs(ref("a4.p0")), None, pairs(ref("a4.p2"))]
    kv, mask = batch_prefixes(kvs, ref("a4.rows").tolist())
    assert torch.equal(mask, ref("a4.mask"))
    assert torch.equal(torch.stack([torch.stack(p) for p in kv]), ref("a4.kv"))   # copies and zeros: exact
    logits, _ = reference_model()(ref("a4.x"), prefix_kv=kv, prefix_mask=mask)
    close(logits, "a4.logits")                                                           # atol 1e-5, rtol 1e-4


@pytest.mark.a4(points=5)
@pytest.mark.parametrize("fast", [True, False])
def test_a4_each_row_of_a_mixed_batch_is_that_row_alone_and_padding_is_never_seen(fast):
    model = reference_model(fast)
    kvs = [pairs(ref("a4.p0")), None, pairs(ref("a4.p2"))]
    rows = ref("a4.rows").tolist()
    x = ref("a4.x")
    kv, mask = batch_prefixes(kvs, rows)
    mixed = model(x, prefix_kv=kv, prefix_mask=mask)[0]
    for b, i in enumerate(rows):
        torch.testing.assert_close(mixed[b:b + 1], model(x[b:b + 1], prefix_kv=kvs[i])[0], atol=1e-5, rtol=0)
    # what sits in a padded slot is never attended to: fill them with large numbers, nothing moves
    noisy = [(k.masked_fill(~mask[:, None, :, None], 1e4), v.masked_fill(~mask[:, None, :, None], -1e4))
             for k, v in kv]
    torch.testing.assert_close(model(x, prefix_kv=noisy, prefix_mask=mask)[0], mixed, atol=1e-5, rtol=0)


# -- A5: generation from a prefix ------------------------------------------------------------------------

@pytest.mark.a5(points=4)
def test_a5_cache_and_greedy_tokens_match_the_reference():
    model = reference_model()
    prefix, idx = pairs(ref("a5.prefix")), ref("a5.idx")
    cache = KVCache(model.config, 2, 3 + 4, prefix)
    with torch.no_grad():
        step(model, idx, cache)
    assert cache.n == 7
    close(torch.stack([torch.stack([K, V]) for K, V in zip(cache.keys, cache.values)]), "a5.cache")
    assert torch.equal(generate(model, idx, 6, temperature=0, prefix_kv=prefix), ref("a5.tokens"))


# -- A6: the frozen tuning step --------------------------------------------------------------------------

@pytest.mark.a6(points=4)
def test_a6_collate_loss_and_prefix_gradient_match_the_reference():
    tokens, n_prompt = ref("a6.tokens").tolist(), ref("a6.n_prompt").tolist()
    examples = [TaskExample([t for t in row if t >= 0], n) for row, n in zip(tokens, n_prompt)]
    x, y = collate(examples)
    assert torch.equal(x, ref("a6.x")) and torch.equal(y, ref("a6.y"))
    model = reference_model()
    prefix = PrefixTuning(model.config, 2)
    with torch.no_grad():
        prefix.prefix.copy_(ref("a6.prefix"))
    _, loss = model(x, y, prefix_kv=prefix(model))
    loss.backward()
    close(loss, "a6.loss")                                                               # atol 1e-5, rtol 1e-4
    close(prefix.prefix.grad, "a6.grad")                                                 # atol 1e-5, rtol 1e-4


@pytest.mark.a6(points=3)
def test_a6_the_loss_counts_only_the_completion_and_its_end_marker(tiny_model):
    """The loss is the mean negative log-likelihood of the completion tokens alone, each predicted from the
    token before it; the prompt's tokens are inputs, never targets."""
    examples = [TaskExample([7, 8, 9, 10, 11, 12], 3), TaskExample([20, 21, 22, 23], 2)]
    x, y = collate(examples)
    _, loss = tiny_model(x, y)
    logp = torch.log_softmax(tiny_model(x)[0], -1)
    terms = [-logp[b, t - 1, e.tokens[t]] for b, e in enumerate(examples) for t in range(e.n_prompt, len(e.tokens))]
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-6, rtol=0)


# -- A7: LoRA and adapters ----------------------------------------------------------------------------------

@pytest.mark.a7(points=6)
def test_a7_lora_merge_and_adapter_match_the_reference():
    lora = LoRALinear(torch.nn.Linear(16, 12), r=2, alpha=4.0)
    lora.load_state_dict({k[len("a7.lora."):]: ref(k) for k in REF.files if k.startswith("a7.lora.")})
    close(lora(ref("a7.x")), "a7.lora_out")                                             # atol 1e-5, rtol 1e-4
    merged = lora.merge()
    assert isinstance(merged, torch.nn.Linear)
    close(merged.weight, "a7.merged_weight")                                            # atol 1e-5, rtol 1e-4
    close(merged(ref("a7.x")), "a7.lora_out")                                           # atol 1e-5, rtol 1e-4
    adapter = Adapter(16, 4)
    adapter.load_state_dict({k[len("a7.adapter."):]: ref(k) for k in REF.files if k.startswith("a7.adapter.")})
    close(adapter(ref("a7.y")), "a7.adapter_out")                                       # atol 1e-5, rtol 1e-4


# -- the handout's questions (no task marker: the answers, checked) ----------------------------------------

def test_free_numbers_of_a_deep_prefix_and_of_a_soft_prompt():
    """GPT-2 small's shape (12 layers, width 768), P = 10: a deep prefix holds a key and a value of width C
    per slot in every layer, 2·L·P·C; a soft prompt one embedding per slot, P·C. Reparameterised, training
    holds P'·C plus the MLP (C·H + H + H·2LC + 2LC) and fold keeps 2·L·P·C."""
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
    L, C, P, H = 12, 768, 10, 512
    count = lambda m: sum(p.numel() for p in m.parameters())
    deep, soft = PrefixTuning(config, P), PromptTuning(config, P)
    assert count(deep) == 2 * L * P * C and count(soft) == P * C
    assert count(deep) == L * 2 * soft.soft_embeds.numel()          # 24 times as many: 2 per layer
    reparam = PrefixTuning(config, P, reparam=True, reparam_hidden=H)
    assert count(reparam) == P * C + C * H + H + H * 2 * L * C + 2 * L * C
    assert count(reparam.fold()) == count(deep)
    # BEGIN ANSWER A2.Q1, A3.Q1 (a student copy leaves the numbers out: course/ANSWERS.md)
    assert (count(deep), count(soft), count(reparam)) == (184_320, 7_680, 9_857_024)
    # END ANSWER
    torch.manual_seed(0)
    small = freeze(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)))
    assert count_parameters(small, PrefixTuning(small.config, 3))["trainable"] == 2 * 2 * 3 * 8


@pytest.mark.a1(points=1)
def test_positions_start_after_the_prefix():
    """The first token after a prefix of 3 slots takes position 3, as if the prefix were 3 prepended tokens;
    a padded slot takes no position, so a row of a mixed batch is numbered as it would be alone."""
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert token_positions(2, 3, None, "cpu").tolist() == [[3, 4]]
    assert token_positions(2, 3, mask, "cpu").tolist() == [[3, 4], [1, 2]]
    assert token_positions(2, 0, None, "cpu").tolist() == [[0, 1]]


def test_prefix_mass_is_a_share_between_0_and_1(tiny_model, tiny_config):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, tiny_config.vocab_size, (2, 6), generator=g)
    for scale in (0.0, 1.0, 30.0):   # from a prefix no query prefers to one that takes nearly everything
        prefix = [(torch.randn(1, 4, 5, 8, generator=g) * scale, torch.randn(1, 4, 5, 8, generator=g))
                  for _ in range(3)]
        mass = prefix_mass(tiny_model, x, prefix)
        assert mass.shape == (3, 4) and mass.min() >= 0 and mass.max() <= 1
    assert mass.max() > 0.9                    # the scaled-up prefix does take most of some head's attention
    layers = attention_maps(tiny_model, x, prefix)
    torch.testing.assert_close(mass, torch.stack([layer.with_prefix[..., :5].sum(-1).mean((0, 2)) for layer in layers]))
    per_input = [prefix_mass(tiny_model, torch.tensor([ids]), prefix) for ids in ([1, 2, 3], [4])]
    torch.testing.assert_close(average_prefix_mass(tiny_model, [[1, 2, 3], [4]], prefix), sum(per_input) / 2)


def test_attention_mass_script_writes_a_png_heatmap(tmp_path, capsys):
    from experiments import attention_mass
    from prefixgpt import cli
    from prefixgpt.checkpoint import save_checkpoint, save_prefix, weights_fingerprint
    ckpt = str(tmp_path / "base.pt")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=256, n_layer=3, n_head=4, n_embd=32))   # byte ids fit
    save_checkpoint(ckpt, model, "byte")
    prefix_file = str(tmp_path / "p.pt")
    save_prefix(prefix_file, PrefixTuning(model.config, 4), "byte", weights_fingerprint(model))
    (tmp_path / "d.jsonl").write_text('{"prompt": "ab", "completion": "cd"}\n{"prompt": "xyz"}\n')
    for how in ([f"--prefix={prefix_file}", f"--data={tmp_path}/d.jsonl"], ["--random_prefix=3", "--text=hello"]):
        out = tmp_path / f"mass{len(how[0])}.png"
        attention_mass.main([f"--base={ckpt}", *how, f"--out={out}", "--device=cpu"])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        table = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("layer")]
        values = [float(v) for line in table for v in line.split(":")[1].split()]
        assert len(table) == 3 and len(values) == 12 and all(0 <= v <= 1 for v in values)
    with pytest.raises(cli.UsageError, match="give one prefix: --prefix=FILE or --random_prefix=P"):
        attention_mass.main([f"--base={ckpt}", "--random_prefix=3", f"--prefix={prefix_file}"])
    with pytest.raises(cli.UsageError, match="must name a .png file"):
        attention_mass.main([f"--base={ckpt}", "--random_prefix=3", "--out=mass.jpg"])


def test_plot_mass_writes_one_png_and_no_temporary_file(tmp_path):
    plot_mass(torch.tensor([[0.0, 1.0], [0.25, 0.5]]), str(tmp_path / "m.png"), "t")
    assert sorted(os.listdir(tmp_path)) == ["m.png"]                            # no temporary file left


# -- the grader's bookkeeping ------------------------------------------------------------------------------

def test_points_are_those_each_test_carries_and_a_parametrised_tests_cases_share_them():
    outcomes = assignments.Outcomes()
    outcomes.task_of = {"t::a": "A1", "t::b[1]": "A1", "t::b[2]": "A1", "t::b[3]": "A1", "t::c": "A1", "t::d": "A8"}
    outcomes.group_of = {n: n.split("[")[0] for n in outcomes.task_of}
    outcomes.points_of = {"t::a": 3, "t::b[1]": 9, "t::b[2]": 9, "t::b[3]": 9, "t::c": 3, "t::d": 10}
    outcomes.passed = {"t::a", "t::b[1]", "t::b[2]", "t::d"}
    outcomes.reason = {"t::b[3]": "AssertionError: 1 != 2", "t::c": "NotImplementedError: A1.2: join the prefix keys"}
    report = assignments.score(outcomes, ["A1", "A8", "A3"])
    a1, a8, a3 = (report["tasks"][t] for t in ("A1", "A8", "A3"))
    # 3 (t::a) + 9 × 2/3 (two of t::b's three cases) + 0 (t::c): 4 passed tests would be 10.0 by count
    assert (a1["points"], a1["max"], a1["passed"], a1["failed"]) == (9.0, 15, 3, 2)
    assert a1["failures"][1] == {"test": "t::c", "reason": "NotImplementedError: A1.2: join the prefix keys"}
    assert (a8["points"], a8["failed"]) == (10.0, 0)
    assert a3["points"] == 0 and report["errors"] == ["no test of A3 was collected (marker a3)"]
    assert report["total"] == 19.0 and report["max"] == 35
    json.dumps(report)                                    # what --json prints
    table = assignments.format_report(report)
    assert "A1         3      2   9.00 / 15" in table and "total" in table and "error: no test of A3" in table
    outcomes.points_of["t::a"] = 2                        # the markers add up to 14 of A1's 15: said, not hidden
    assert "A1's tests carry 14 points but the task is worth 15" in " ".join(assignments.score(outcomes, ["A1"])["errors"])


def test_every_tasks_graded_tests_carry_points_that_add_up_to_the_task():
    """Collected as grade.py collects them: every graded test has its points, and each task's add up."""
    import contextlib
    import io
    outcomes = assignments.Outcomes()
    args = [os.path.join(ROOT, f) for f in assignments.TEST_FILES] + [
        "-m", assignments.marker_expression(assignments.POINTS), "--collect-only", "-q", "-p", "no:cacheprovider",
        f"--rootdir={ROOT}", "-c", os.path.join(ROOT, "pytest.ini")]
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(args, plugins=[outcomes])
    assert outcomes.errors == []
    for task, points in assignments.POINTS.items():
        groups = {outcomes.group_of[n]: outcomes.points_of[n] for n, t in outcomes.task_of.items() if t == task}
        assert sum(groups.values()) == points, (task, groups)


def test_the_points_table_covers_every_task_and_the_ladder_is_acyclic():
    assert list(assignments.POINTS) == [f"A{i}" for i in range(1, 9)] == list(assignments.TITLES)
    assert sum(assignments.POINTS.values()) == 100
    order = list(assignments.POINTS)
    for task, below in assignments.BUILDS_ON.items():
        assert all(order.index(b) < order.index(task) for b in below), task     # a task builds on earlier ones
    assert assignments.needs("A5") == {"A1", "A3", "A4", "A5"}


def test_task_names_are_checked_in_one_line():
    assert assignments.parse_tasks("a8, A2") == ["A2", "A8"]
    for bad, message in (("A9", "unknown task A9: the tasks are A1, A2"), ("", "no task given"),
                         (" , ", "no task given")):
        with pytest.raises(assignments.AssignmentError, match=message) as e:
            assignments.parse_tasks(bad)
        assert "\n" not in str(e.value)
    assert assignments.marker_expression(["A2", "A8"]) == "a2 or a8"


def test_grade_py_refuses_bad_input_in_one_line():
    from conftest import one_line_error, run
    one_line_error(run("course/grade.py", "--tasks", "A1,B2", check=False), "unknown task B2")
    one_line_error(run("course/grade.py", "--score=3", check=False), "unrecognized arguments")
