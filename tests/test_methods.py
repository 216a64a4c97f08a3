"""methods.py and the shared loop: LoRA, adapters, BitFit, FT-top2 and FT train what they should, start
as the base, merge and save exactly, and refuse a base they were not trained on."""
import copy

import pytest
import torch

from conftest import one_line_error, run
from model import GPT
from prefixgpt.checkpoint import load_delta, save_delta, weights_fingerprint
from prefixgpt.methods import WEIGHT_METHODS, LoRALinear, attach, merge_lora
from prefixgpt.optim import make_adamw

SETTINGS = {"lora_r": 2, "lora_alpha": 4.0, "lora_targets": ("attn.c_attn", "mlp.c_fc"), "adapter_size": 4}


def base_and_tuned(tiny_model, method):
    base = copy.deepcopy(tiny_model)
    return base, attach(method, copy.deepcopy(tiny_model), **SETTINGS)


def batch(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (2, 9), generator=g)
    return x, torch.roll(x, -1, dims=1)


def graded_a7(methods, points: int):
    """LoRA's and adapters' cases carry A7's marker: they run the code A7 writes; the others run none. The
    graded cases of one test share its points."""
    return [pytest.param(m, marks=pytest.mark.a7(points=points)) if m in ("lora", "adapter") else m for m in methods]


@pytest.mark.parametrize("method", graded_a7(WEIGHT_METHODS, points=3))
def test_every_method_starts_as_the_base_exactly(tiny_model, tiny_config, method):
    base, tuned = base_and_tuned(tiny_model, method)
    x, _ = batch(tiny_config)
    assert torch.equal(tuned(x)[0], base(x)[0])


TRAINS = {  # which of the base's own tensors a method may change
    "lora": lambda name: False, "adapter": lambda name: False, "bitfit": lambda name: name.endswith(".bias"),
    "ft-top2": lambda name: name.startswith(("transformer.h.1.", "transformer.h.2.", "transformer.ln_f.")),
    "ft": lambda name: True}


@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_only_the_right_tensors_train(tiny_model, tiny_config, method):
    """One AdamW step: the base tensors the method freezes stay bit-identical; the ones it trains move,
    and so do the tensors it adds."""
    base, tuned = base_and_tuned(tiny_model, method)
    before = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    opt = make_adamw(tuned, lr=1e-2, weight_decay=0.0)
    x, y = batch(tiny_config)
    tuned.train()
    tuned(x, y)[1].backward()
    opt.step()
    after = dict(tuned.named_parameters())
    for name, old in before.items():
        base_name = name.replace(".base.", ".").replace("attn.attn.", "attn.").replace("mlp.mlp.", "mlp.")
        is_base = base_name in dict(base.named_parameters())
        should_train = TRAINS[method](base_name) if is_base else True
        moved = not torch.equal(old, after[name].detach())
        if not should_train:
            assert not moved, name
        assert after[name].requires_grad == should_train, name
    assert any(not torch.equal(before[n], p.detach()) for n, p in after.items() if p.requires_grad)


@pytest.mark.a7(points=4)
def test_lora_merges_into_a_plain_model_with_the_same_logits(tiny_model, tiny_config):
    _, tuned = base_and_tuned(tiny_model, "lora")
    with torch.no_grad():
        for m in tuned.modules():
            if isinstance(m, LoRALinear):
                m.B.normal_(0, 0.5)   # a trained-looking update, so the merge has something to fold
    x, _ = batch(tiny_config)
    want = tuned(x)[0]
    merged = merge_lora(tuned)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(tiny_model.state_dict())   # a plain GPT again
    plain = GPT(tiny_config)
    plain.load_state_dict(merged.state_dict())
    assert torch.allclose(plain.eval()(x)[0], want, atol=1e-5)
    assert not torch.allclose(tiny_model(x)[0], want, atol=1e-3)     # and the update did something


@pytest.mark.parametrize("method", graded_a7(["lora", "adapter", "bitfit"], points=2))
def test_a_delta_file_round_trips_and_refuses_another_base(tiny_model, tiny_config, method, tmp_path):
    _, tuned = base_and_tuned(tiny_model, method)
    with torch.no_grad():
        for p in tuned.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    path = str(tmp_path / "delta.pt")
    save_delta(path, tuned, method, SETTINGS, "byte", weights_fingerprint(tiny_model))
    loaded, meta = load_delta(path, copy.deepcopy(tiny_model), "byte", weights_fingerprint(tiny_model))
    x, _ = batch(tiny_config)
    assert meta["method"] == method and torch.equal(loaded(x)[0], tuned.eval()(x)[0])
    torch.manual_seed(5)
    other = GPT(tiny_config)
    with pytest.raises(ValueError, match="trained on another base model"):
        load_delta(path, other, "byte", weights_fingerprint(other))
    with pytest.raises(ValueError, match="'byte' tokenizer, the model uses 'gpt2'"):
        load_delta(path, copy.deepcopy(tiny_model), "gpt2")


def test_bitfit_on_a_model_without_biases_is_a_clear_error(tiny_config):
    tiny_config.bias = False
    with pytest.raises(ValueError, match="has none"):
        attach("bitfit", GPT(tiny_config))


@pytest.fixture(scope="module")
def base_and_task(tmp_path_factory):
    """A tiny pretrained base and a task file, shared by the end-to-end tests below."""
    import json
    from data.shakespeare.prepare import prepare
    from data.tokenizer import ByteTokenizer
    d = tmp_path_factory.mktemp("family")
    prepare("the king said yes.\nthe fool said no.\n" * 80, ByteTokenizer(), str(d / "c"))
    run("train.py", f"--data_dir={d}/c", f"--out_dir={d}/base", "--n_layer=2", "--n_head=2",
        "--n_embd=32", "--block_size=48", "--batch_size=4", "--max_iters=20", "--eval_interval=20",
        "--eval_iters=2", "--learning_rate=3e-3", "--plot=false", "--device=cpu")
    rows = [{"prompt": f"the {a} said", "completion": f" {b}."} for a in ("king", "fool", "queen") for b in ("yes", "no")]
    (d / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d, d / "task.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ft-top2"])
def test_the_family_trains_through_finetune_prefix_and_evaluate_scores_it(method, base_and_task, tmp_path):
    """One loop for every method: lower val loss, frozen tensors bit-identical, and evaluate.py scores
    the saved delta (LoRA) or checkpoint (FT-top2)."""
    import json
    d, task = base_and_task
    res = run("finetune_prefix.py", f"--base={d}/base/best.pt", f"--train_file={task}", f"--val_file={task}",
              f"--out_dir={tmp_path}/t", f"--method={method}", "--batch_size=6", "--max_iters=30",
              "--eval_interval=10", "--learning_rate=1e-2", "--device=cpu")
    assert "bit-identical" in res.stdout
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["best_val_loss"] < summary["val_loss_base"]
    score = (["--base=" + str(tmp_path / "t" / "model.pt")] if method == "ft-top2" else
             [f"--base={d}/base/best.pt", f"--delta={tmp_path}/t/delta.pt"])
    res = run("evaluate.py", "--mode=loss", *score, f"--data={task}", "--device=cpu")
    assert f"loss {summary['best_val_loss']:.4f}" in res.stdout
    if method == "lora":   # a delta file is not a model: it needs its base
        res = run("evaluate.py", "--mode=loss", f"--base={tmp_path}/t/delta.pt", f"--data={task}", check=False)
        one_line_error(res, "is not a prefixgpt checkpoint")
