"""Past one process and past today's memory: finetune_prefix.py under torchrun (two Gloo processes on the
CPU train the same prefix, or LoRA, as one process on the same global batch; prefixgpt/distributed.py's
pieces that make it so; a signal to one rank) and with --grad_checkpoint (the same prefix)."""
import json
import os

import pytest
import torch

from conftest import needs_proc, run, torchrun, torchrun_then_signal_rank_1
from data.tokenizer import ByteTokenizer
from model import GPT, GPTConfig
from prefixgpt.checkpoint import save_checkpoint
from prefixgpt.distributed import Parallel

TOK = ByteTokenizer()
ROWS = [{"prompt": f"name[{n}], food[{f}] ||", "completion": f" {n} serves {f} food."}
        for n in ("Blue Spice", "The Mill", "Zizzi", "Loch Fyne", "Aromi", "Cotto")
        for f in ("Chinese", "Italian", "French")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A random tiny base (no pretraining needed: the test compares two ways of training it) and a task."""
    d = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    base = GPT(GPTConfig(block_size=64, vocab_size=TOK.vocab_size, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(str(d / "base.pt"), base, TOK.name)
    return {"dir": d, "base": str(d / "base.pt"), "train": write_jsonl(d / "train.jsonl", ROWS),
            "val": write_jsonl(d / "val.jsonl", ROWS[::4])}


def tune_args(task, out, method, batch_size):
    # 6 steps, one evaluation at the end: the saved state is the one after step 6 (best_iter is checked)
    return [f"--base={task['base']}", f"--train_file={task['train']}", f"--val_file={task['val']}",
            f"--method={method}", f"--batch_size={batch_size}", "--max_iters=6", "--eval_interval=6",
            "--warmup_iters=0", "--learning_rate=3e-2" if method == "prefix" else "--learning_rate=1e-2",
            "--device=cpu", "--log_interval=3", f"--out_dir={out}"]


def trained_state(out, method) -> dict:
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["best_iter"] == 6, summary          # trained: not the step-0 state, equal in any case
    return torch.load(os.path.join(out, "prefix.pt" if method == "prefix" else "delta.pt"), weights_only=True)["state"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_two_gloo_processes_train_what_one_process_trains_on_the_same_global_batch(task, tmp_path, method):
    one = str(tmp_path / "one")
    run("finetune_prefix.py", *tune_args(task, one, method, batch_size=8))
    two = str(tmp_path / "two")
    code, text = torchrun("finetune_prefix.py", *tune_args(task, two, method, batch_size=4),
                          log_path=tmp_path / "two.log")
    assert code == 0, text
    assert "cpu x2" in text and text.count("iter 6/6") == 1, text     # rank 1 prints nothing
    a, b = trained_state(one, method), trained_state(two, method)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    one_loss = json.load(open(os.path.join(one, "summary.json")))["best_val_loss"]
    two_loss = json.load(open(os.path.join(two, "summary.json")))["best_val_loss"]
    assert abs(one_loss - two_loss) < 1e-4, (one_loss, two_loss)


def test_the_rank_shares_weighted_by_their_tokens_give_the_global_batch_loss():
    # L = Σ_r n_r·L_r / N: the mean over ranks of L_r·(n_r·world/N), which token_weight supplies; a plain
    # mean of the ranks' losses would weigh a short share as much as a long one
    y = torch.tensor([[5, 6, 7, -1], [-1, -1, 8, -1], [1, 2, 3, 4]])
    token_loss = torch.tensor([[0.5, 1.0, 1.5, 0.0], [0.0, 0.0, 4.0, 0.0], [1.0, 1.0, 2.0, 2.0]])
    whole = token_loss[y != -1].mean()
    world, parts = 2, []
    for rank in range(world):
        ys, ls = y[rank::world], token_loss[rank::world]
        n, N = (ys != -1).sum(), (y != -1).sum()
        parts.append(ls[ys != -1].mean() * n * world / N)
    torch.testing.assert_close(sum(parts) / world, whole)
    assert not torch.isclose(sum(ls[y2 != -1].mean() for y2, ls in
                                 ((y[r::2], token_loss[r::2]) for r in range(2))) / 2, whole)


def test_one_process_is_rank_0_of_1_and_changes_nothing():
    par = Parallel()
    assert (par.rank, par.world, par.master, par.enabled) == (0, 1, True, False)
    batch = list(range(7))
    assert par.share(batch) == batch and par.token_weight(torch.tensor([[1, -1]])) == 1.0
    g = torch.ones(3)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = g.clone()
    par.average_gradients([p])
    assert torch.equal(p.grad, g) and par.sum(2.0, 3) == [2.0, 3] and par.any(0, 1) == [False, True]


def test_shares_are_interleaved_so_each_rank_pads_alike():
    batch = list(range(10))   # a batch arrives sorted by length: rank 0 and rank 1 each get short and long
    assert Parallel(0, 2).share(batch) == [0, 2, 4, 6, 8] and Parallel(1, 2).share(batch) == [1, 3, 5, 7, 9]


@pytest.mark.slow
@needs_proc
def test_a_signal_to_one_rank_stops_both_and_keeps_the_best_prefix(task, tmp_path):
    # as train.py's: the signalled rank must not leave the loop while the other waits in an all-reduce
    out = str(tmp_path / "stop")
    args = tune_args(task, out, "prefix", batch_size=4)
    args = [a for a in args if not a.startswith(("--max_iters", "--eval_interval"))]
    text = torchrun_then_signal_rank_1("finetune_prefix.py", *args, "--max_iters=100000", "--eval_interval=20",
                                       "--patience=100000", log_path=tmp_path / "stop.log", once="iter 30/")
    assert "stopped by signal 15" in text and "the best prefix so far is kept" in text, text
    assert json.load(open(os.path.join(out, "summary.json")))["stopped_by"] == 15


@pytest.mark.slow
def test_grad_checkpoint_trains_the_same_prefix(task, tmp_path):
    runs = {}
    for on in ("false", "true"):
        out = str(tmp_path / on)
        run("finetune_prefix.py", *tune_args(task, out, "prefix", batch_size=8), f"--grad_checkpoint={on}")
        runs[on] = trained_state(out, "prefix")
    for k in runs["false"]:
        torch.testing.assert_close(runs["true"][k], runs["false"][k], rtol=1e-5, atol=1e-6, msg=k)
