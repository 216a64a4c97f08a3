"""train.py and sample.py from the command line: training works, resumes exactly, survives bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, RunsCode, needs_proc, run, torchrun, torchrun_then_signal_rank_1
from data.shakespeare.prepare import prepare
from data.tokenizer import ByteTokenizer

pytestmark = pytest.mark.slow   # every test here trains or runs a script

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_iters=2",
        "--log_interval=1", "--warmup_iters=2", "--device=cpu"]



def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["iter"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = "".join(f"{w} said the {a} to the {b}.\n" for w in ("Alas", "Lo", "Hark", "Fie")
                   for a in ("king", "fool", "queen", "ghost", "duke") for b in ("moon", "sea", "crown", "sword"))
    prepare(text * 6, ByteTokenizer(), str(d))
    return str(d)


def test_twenty_iterations_lower_the_loss_and_write_both_checkpoints(corpus, tmp_path):
    out = str(tmp_path / "run")
    res = run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=20", "--lr_decay_iters=20",
              "--eval_interval=10", "--learning_rate=3e-3", *TINY)
    for name in ("last.pt", "best.pt", "config.json", "metrics.jsonl", "loss.png", "summary.json"):
        assert os.path.exists(os.path.join(out, name)), name
    curve = losses(out)
    assert curve[20] < curve[1] - 0.5
    assert "tok/s" in res.stdout and "ETA" in res.stdout
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["best_val_loss"] <= summary["final_val_loss"]
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["iter_num"] == 20 and ckpt["tokenizer"] == "byte" and "optimizer" in ckpt
    assert json.load(open(os.path.join(out, "config.json")))["train"]["max_iters"] == 20


def test_grad_checkpoint_trains_as_without_it(corpus, tmp_path):
    common = [f"--data_dir={corpus}", "--max_iters=5", "--lr_decay_iters=5", "--eval_interval=5", "--dropout=0.1",
              "--plot=false", *TINY]
    run("train.py", f"--out_dir={tmp_path}/off", *common)
    run("train.py", f"--out_dir={tmp_path}/on", "--grad_checkpoint=true", *common)
    off, on = losses(f"{tmp_path}/off"), losses(f"{tmp_path}/on")
    assert sorted(on) == list(range(1, 6)) and on == pytest.approx(off, rel=1e-5)


def test_resume_continues_exactly_like_an_uninterrupted_run(corpus, tmp_path):
    common = [f"--data_dir={corpus}", "--lr_decay_iters=20", "--eval_interval=10", "--dropout=0.1", *TINY]
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    run("train.py", f"--out_dir={whole}", "--max_iters=20", *common)
    run("train.py", f"--out_dir={halves}", "--max_iters=10", *common)
    res = run("train.py", f"--out_dir={halves}", "--max_iters=20", "--resume", *common)
    assert "resuming" in res.stdout
    a, b = losses(whole), losses(halves)
    assert sorted(b) == list(range(1, 21))
    for it in range(11, 21):   # dropout and batch sampling continue from the saved RNG states
        assert a[it] == b[it], (it, a[it], b[it])


def test_two_process_data_parallel_run_with_gloo(corpus, tmp_path):
    out = str(tmp_path / "ddp")
    # Output goes to a file, not a pipe: torchrun starts each worker in a session of its own, so after a
    # timeout a stuck worker would keep a pipe open and the test would hang instead of failing.
    log_path = tmp_path / "ddp.log"
    code, stdout = torchrun("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=6",
                            "--lr_decay_iters=6", "--eval_interval=6", "--plot=false", *TINY, log_path=log_path)
    assert code == 0, stdout
    assert "device cpu x2" in stdout
    assert "256 tokens/iter" in stdout                # 4 sequences × 32 tokens × 2 processes
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["iter_num"] == 6


def test_sigterm_saves_a_checkpoint_that_resumes(corpus, tmp_path):
    out = str(tmp_path / "stopped")
    proc = subprocess.Popen([sys.executable, "train.py", f"--data_dir={corpus}", f"--out_dir={out}",
                             "--max_iters=100000", "--eval_interval=0", "--plot=false", *TINY],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:   # wait until training is under way
        if line.startswith("iter 5/") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in stdout
    it = torch.load(os.path.join(out, "last.pt"), weights_only=True)["iter_num"]
    assert it >= 5
    res = run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--resume", f"--max_iters={it + 2}")
    assert f"iteration {it}" in res.stdout


@needs_proc
def test_a_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(corpus, tmp_path):
    # Without agreeing on when to stop, the signalled rank leaves the loop and the other one waits
    # forever in the next gradient all-reduce.
    out = str(tmp_path / "ddp_stop")
    text = torchrun_then_signal_rank_1("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=100000",
                                       "--eval_interval=0", "--plot=false", *TINY, log_path=tmp_path / "ddp_stop.log",
                                       once="iter 5/")
    assert "stopped by signal 15" in text and "--resume" in text, text
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["iter_num"] >= 5


# -- bad input: one clear line, nothing overwritten ---------------------------------------------------

def test_missing_data_names_the_prepare_command(tmp_path):
    res = run("train.py", f"--data_dir={tmp_path}/nothing", f"--out_dir={tmp_path}/o", check=False)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "data/shakespeare/prepare.py" in res.stderr


@pytest.mark.parametrize("flag,message", [("--no_such_setting=1", "unknown setting 'no_such_setting'"),
                                          ("--max_iter=5", "did you mean --max_iters"),
                                          ("--max_iters=many", "--max_iters expects int, got 'many'"),
                                          ("--dropout=0.1.2", "--dropout expects float"),
                                          ("--compile=maybe", "--compile expects bool")])
def test_bad_flags_are_one_line_errors(flag, message):
    res = run("train.py", flag, check=False)
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1


def test_help_lists_every_setting_with_its_default():
    out = run("train.py", "--help").stdout
    for text in ("--max_iters", "2000", "--n_layer", "--dropout", "--resume", "--grad_accum"):
        assert text in out


def test_a_fresh_run_never_clobbers_an_earlier_one(corpus, tmp_path):
    out = tmp_path / "run"
    run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2",
        "--plot=false", *TINY)
    before = (out / "last.pt").read_bytes()
    res = run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=2", *TINY, check=False)
    assert res.returncode == 1 and "--resume" in res.stderr
    assert (out / "last.pt").read_bytes() == before



@pytest.mark.parametrize("kind", ["corrupt", "pickled code"])
def test_bad_checkpoints_are_refused_and_left_alone(corpus, tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code_ran"
    if kind == "corrupt":
        (out / "last.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    else:
        torch.save({"format": "prefixgpt-checkpoint/1", "model": RunsCode(str(marker))}, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    for script, args in (("train.py", [f"--data_dir={corpus}", f"--out_dir={out}", "--resume"]),
                         ("sample.py", [f"--base={out}/last.pt"])):
        res = run(script, *args, check=False)
        assert res.returncode == 1, res.stderr
        assert ("corrupt" if kind == "corrupt" else "refusing to load") in res.stderr
        assert res.stderr.count("\n") == 1
    assert not marker.exists()
    assert (out / "last.pt").read_bytes() == before


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=2",
        "--plot=false", *TINY)
    good = (out / "last.pt").read_bytes()
    res = run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--resume", "--max_iters=30",
              "--learning_rate=1e30", "--min_lr=1e30", "--grad_clip=0", check=False)
    assert res.returncode == 1 and "diverged" in res.stderr and "last good checkpoint" in res.stderr
    assert (out / "last.pt").read_bytes() == good


def test_sample_generates_from_a_checkpoint(corpus, tmp_path):
    out = str(tmp_path / "run")
    run("train.py", f"--data_dir={corpus}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2",
        "--plot=false", *TINY)
    res = run("sample.py", f"--base={out}/best.pt", "--prompt=Alas", "--num_samples=2", "--max_new_tokens=8",
              "--seed=3")
    assert res.stdout.count("--- [no prefix] ---") == 2
    again = run("sample.py", f"--base={out}/best.pt", "--prompt=Alas", "--num_samples=2", "--max_new_tokens=8",
                "--seed=3")
    assert res.stdout == again.stdout
