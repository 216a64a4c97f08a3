"""Bad input and faults: every one is a single line that says what is wrong, and nothing saved is lost.

The fast half checks settings, file formats and the write path in-process; the slow half runs the
scripts on a tiny pretraining run and a tiny prefix run, as a user would, and breaks things.
"""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from prefixgpt import cli
from prefixgpt.checkpoint import (NonFiniteWeights, load_checkpoint, load_model, load_prefix, save_checkpoint,
                        save_prefix, state_checksum)
from conftest import ROOT, RunsCode, one_line_error, run
from data.files import atomic_write, write_atomic
from data.shakespeare.prepare import prepare
from data.tokenizer import ByteTokenizer
from evaluate import EvalConfig
from finetune_prefix import FinetuneConfig
from model import GPTConfig, sample_next
from prefix import PrefixTuning
from prefixgpt.runtime import StopOnSignal, pick_device, resolve_dtype
from sample import SampleConfig
from train import TrainConfig

# -- settings: checked where they are parsed, one message each ------------------------------------

BAD_SETTINGS = [  # (the script's settings, flags, what the message must say)
    ((TrainConfig, GPTConfig), ["--log_interval=0"], "--log_interval must be at least 1"),
    ((TrainConfig, GPTConfig), ["--grad_accum=0"], "--grad_accum must be at least 1"),
    ((TrainConfig, GPTConfig), ["--batch_size=-2"], "--batch_size must be at least 1"),
    ((TrainConfig, GPTConfig), ["--batch_size=0"], "--batch_size must be at least 1"),
    ((TrainConfig, GPTConfig), ["--eval_iters=0"], "--eval_iters must be at least 1"),
    ((TrainConfig, GPTConfig), ["--dtype=float8"], "--dtype must be one of auto, float32, bfloat16, float16"),
    ((TrainConfig, GPTConfig), ["--dtype=bf16"], "--dtype must be one of"),
    ((TrainConfig, GPTConfig), ["--device=gpu"], "--device='gpu' is not allowed"),
    ((TrainConfig, GPTConfig), ["--learning_rate=nan"], "--learning_rate must be a finite number"),
    ((TrainConfig, GPTConfig), ["--n_embd=30", "--n_head=4"], "n_embd (30) must be divisible by n_head (4)"),
    ((TrainConfig, GPTConfig), ["--dropout=1.5"], "--dropout must be at most 0.99"),
    ((TrainConfig, GPTConfig), ["--gelu=relu"], "--gelu must be one of exact, tanh"),
    ((FinetuneConfig,), ["--eval_interval=0"], "--eval_interval must be at least 1"),
    ((FinetuneConfig,), ["--max_train_examples=-1"], "--max_train_examples must be at least 0"),
    ((FinetuneConfig,), ["--reparam_hidden=0"], "--reparam_hidden must be at least 1"),
    ((FinetuneConfig,), ["--method=dora"], "--method must be one of prefix, prefix-reparam, prompt, lora"),
    ((FinetuneConfig,), ["--lora_targets=attn.c_attn,wte"], "--lora_targets must be one of attn.c_attn"),
    ((FinetuneConfig,), ["--init=zeros"], "--init must be one of random, text"),
    ((FinetuneConfig,), ["--patience=0"], "--patience must be at least 1"),
    ((SampleConfig,), ["--num_samples=0"], "--num_samples must be at least 1"),
    ((SampleConfig,), ["--top_k=0"], "--top_k must be at least 1"),
    ((SampleConfig,), ["--top_k=-5"], "--top_k must be at least 1"),
    ((SampleConfig,), ["--temperature=-1"], "--temperature must be at least 0.0"),
    ((SampleConfig,), ["--temperature=nan"], "--temperature must be a finite number"),
    ((EvalConfig,), ["--beam=0"], "--beam must be at least 1"),
    ((EvalConfig,), ["--mode=bleu"], "--mode must be one of loss, generate, classify"),
]


@pytest.mark.parametrize("classes,flags,message", BAD_SETTINGS, ids=[" ".join(f) for _, f, _ in BAD_SETTINGS])
def test_a_bad_setting_is_refused_where_it_is_parsed(classes, flags, message):
    with pytest.raises(cli.UsageError) as e:
        cli.parse(flags, *(c() for c in classes))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_numeric_setting_of_every_script_has_a_range():
    """A new setting gets its check by construction: a number without min/max/choices is a defect."""
    free = {"seed"}   # any integer seeds torch
    from experiments.attention_mass import MassConfig
    from checks.bench import BenchConfig
    from experiments.compare import CompareConfig
    from demo import DemoConfig
    from checks.devicecheck import CheckConfig
    from experiments.probe import ProbeConfig
    for cls in (TrainConfig, GPTConfig, FinetuneConfig, SampleConfig, EvalConfig, BenchConfig, CompareConfig,
                MassConfig, DemoConfig, ProbeConfig, CheckConfig):
        for f in cls.__dataclass_fields__.values():
            if f.type in (int, float, "int", "float", int | None, "int | None") and f.name not in free:
                assert f.metadata, f"{cls.__name__}.{f.name} has no allowed range"


def test_temperature_and_top_k_are_checked_in_the_model_too(tiny_config):
    logits = torch.randn(2, tiny_config.vocab_size)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            sample_next(logits, bad)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, 1.0, top_k=0)


def test_devices_that_do_not_exist_are_named_with_those_that_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device=cuda is not available on this machine; it has: cpu"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="must be auto, cpu, cuda, cuda:N or mps"):
        pick_device("gpu")
    assert pick_device("auto") == "cpu"
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        resolve_dtype("cpu", "float16")
    assert resolve_dtype("cpu", "auto") == "float32"


def test_emulated_bf16_does_not_count(monkeypatch):
    """A card with emulated bf16 only (V100, T4) gets fp32 under auto, and an error asking for bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("cuda", "auto") == "float32"
    with pytest.raises(ValueError, match="not supported natively"):
        resolve_dtype("cuda", "bfloat16")


# -- files: never half-written, never trusted -----------------------------------------------------

def test_a_full_disk_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    path = tmp_path / "last.pt"
    write_atomic(str(path), b"the good checkpoint")

    def fill(f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as e:
        atomic_write(str(path), fill)
    assert "No space left on device" in str(e.value) and str(path) in str(e.value)
    assert path.read_bytes() == b"the good checkpoint" and os.listdir(tmp_path) == ["last.pt"]


def test_non_finite_weights_are_never_saved(tiny_model, tiny_config, tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), tiny_model, "byte")
    good = path.read_bytes()
    with torch.no_grad():
        tiny_model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="NaN or inf.*last good checkpoint is kept"):
        save_checkpoint(str(path), tiny_model, "byte")
    assert path.read_bytes() == good
    prefix = PrefixTuning(tiny_config, 2)
    with torch.no_grad():
        prefix.prefix[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteWeights):
        save_prefix(str(tmp_path / "p.pt"), prefix, "byte")
    assert not (tmp_path / "p.pt").exists()


def damaged(tmp_path, tiny_model, change):
    """A checkpoint written by save_checkpoint, then changed by change(blob) and saved again as it is."""
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, tiny_model, "byte")
    blob = torch.load(path, weights_only=True)
    change(blob)
    torch.save(blob, path)
    return path


def test_checkpoints_missing_keys_or_tensors_name_them(tiny_model, tmp_path):
    cases = [(lambda b: b.pop("model_config"), "lacks 'model_config'"),
             (lambda b: b["model"].pop("transformer.h.1.attn.c_attn.weight"),
              "lacks the tensors transformer.h.1.attn.c_attn.weight"),
             (lambda b: b["model"].__setitem__("extra.weight", torch.zeros(2)), "unexpected tensors extra.weight"),
             (lambda b: b["model"].__setitem__("transformer.wpe.weight", torch.zeros(3, 3)),
              "wrong shape transformer.wpe.weight")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            load_checkpoint(damaged(tmp_path, tiny_model, change))
    with pytest.raises(ValueError, match="lacks 'optimizer'"):   # fine to sample from, not to resume
        load_checkpoint(damaged(tmp_path, tiny_model, lambda b: None), need_resume=True)


def test_a_damaged_checkpoint_is_called_damaged_and_a_nan_one_is_refused(tiny_model, tmp_path):
    def flip(b):   # what a flipped bit in the weights does: a value changes, the stored checksum does not
        b["model"]["transformer.h.0.ln_1.weight"][3] += 1.0
    with pytest.raises(ValueError, match="is damaged: its weights do not match the checksum"):
        load_checkpoint(damaged(tmp_path, tiny_model, flip))

    def nan(b):    # NaN with a matching checksum: written by something else, never by save_checkpoint
        b["model"]["lm_head.weight"][0, 0] = float("nan")
        b["weights_sha256"] = state_checksum(b["model"])
    with pytest.raises(NonFiniteWeights, match="holds NaN or inf weights"):
        load_checkpoint(damaged(tmp_path, tiny_model, nan))


def test_a_prefix_file_missing_its_tensors_says_so(tiny_model, tiny_config, tmp_path):
    path = str(tmp_path / "p.pt")
    save_prefix(path, PrefixTuning(tiny_config, 2), "byte")
    blob = torch.load(path, weights_only=True)
    del blob["state"]
    torch.save(blob, path)
    with pytest.raises(ValueError, match="lacks 'state'"):
        load_prefix(path, tiny_model)
    blob["state"] = {"prefix": torch.zeros(1, 2, 3)}
    torch.save(blob, path)
    with pytest.raises(ValueError, match=r"holds tensors \{'prefix': \(1, 2, 3\)\}"):
        load_prefix(path, tiny_model)


def test_a_text_file_is_not_a_checkpoint_and_pickled_code_is_refused_in_one_clean_sentence(tiny_model, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    for loader in (load_checkpoint, lambda p: load_prefix(p, tiny_model)):
        with pytest.raises(ValueError) as e:
            loader(str(text))
        assert "is not a" in str(e.value) and "code" not in str(e.value)
    evil = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(str(tmp_path / "ran"))}, evil)
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(evil))
    message = str(e.value)
    assert message.endswith("and loading those could run code") and "(os.makedirs)" in message
    assert "weights_only" not in message and "\n" not in message   # not PyTorch's advice to load unsafely
    assert not (tmp_path / "ran").exists()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(str(tmp_path))


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, whatever pytest inherited: a shell starts a background
    job (`cmd &`) with SIGINT ignored, and Python then installs no handler, so Ctrl-C raises nothing."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def test_ctrl_c_after_the_training_loop_interrupts_as_usual_and_main_guard_makes_it_one_line(capsys, monkeypatch,
                                                                                             python_ctrl_c):
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert stop.signal == signal.SIGINT                           # inside: noted, the step finishes
    with pytest.raises(KeyboardInterrupt):                        # outside (train.py's final pass): interrupts
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(sys, "argv", ["x.py"])
    with pytest.raises(SystemExit) as e:
        cli.main_guard(interrupted)
    assert e.value.code == 130 and capsys.readouterr().err.count("\n") == 1


# -- the scripts, end to end -------------------------------------------------------------------------

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=48", "--batch_size=4", "--eval_iters=2",
        "--warmup_iters=2", "--device=cpu", "--plot=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny pretraining run (4 steps) and a prefix-tuning run on it (2 steps)."""
    d = tmp_path_factory.mktemp("runs")
    prepare("".join(f"the {a} said {b}.\n" for a in ("king", "fool", "ghost") for b in ("yes", "no")) * 40,
            ByteTokenizer(), str(d / "corpus"))
    base = d / "base"
    run("train.py", f"--data_dir={d}/corpus", f"--out_dir={base}", "--max_iters=4", "--eval_interval=2", *TINY)
    rows = [{"prompt": f"the {a} said", "completion": f" {b}."} for a in ("king", "fool") for b in ("yes", "no")]
    (d / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix = d / "prefix"
    run("finetune_prefix.py", f"--base={base}/best.pt", f"--train_file={d}/task.jsonl", f"--val_file={d}/task.jsonl",
        f"--out_dir={prefix}", "--n_prefix=2", "--batch_size=2", "--max_iters=2", "--eval_interval=2", "--device=cpu")
    return {"dir": d, "corpus": str(d / "corpus"), "base": base, "prefix": prefix, "task": str(d / "task.jsonl")}


def snapshot(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_a_script_never_writes_into_another_kind_of_run(runs):
    before = snapshot(runs["base"]), snapshot(runs["prefix"])
    res = run("finetune_prefix.py", f"--base={runs['base']}/best.pt", f"--train_file={runs['task']}",
              f"--val_file={runs['task']}", f"--out_dir={runs['base']}", "--overwrite", check=False)
    one_line_error(res, "holds a pretraining run; finetune_prefix.py will not write into it")
    res = run("train.py", f"--data_dir={runs['corpus']}", f"--out_dir={runs['prefix']}", "--overwrite", *TINY,
              check=False)
    one_line_error(res, "holds a tuning run (a prefix or another method); train.py will not write into it")
    res = run("finetune_prefix.py", f"--base={runs['base']}/best.pt", f"--train_file={runs['task']}",
              f"--val_file={runs['task']}", f"--out_dir={runs['prefix']}", check=False)
    one_line_error(res, "already holds a tuning run", "--overwrite")
    assert (snapshot(runs["base"]), snapshot(runs["prefix"])) == before


@pytest.mark.slow
def test_evaluate_never_overwrites_a_checkpoint_or_an_existing_file(runs, tmp_path):
    common = ["--mode=generate", f"--base={runs['base']}/best.pt", f"--data={runs['task']}", "--max_new_tokens=3"]
    for target in (f"{runs['base']}/best.pt", f"{runs['prefix']}/prefix.pt"):
        before = open(target, "rb").read()
        one_line_error(run("evaluate.py", *common, f"--out={target}", "--overwrite", check=False),
                       "is a checkpoint or prefix file: refusing to overwrite it")
        assert open(target, "rb").read() == before
    existing = tmp_path / "mine.jsonl"
    existing.write_text("keep me\n")
    one_line_error(run("evaluate.py", *common, f"--out={existing}", check=False), "already exists", "--overwrite")
    assert existing.read_text() == "keep me\n"
    one_line_error(run("evaluate.py", *common, f"--out={tmp_path}", check=False), "is a directory")
    run("evaluate.py", *common, f"--out={existing}", "--overwrite")
    assert existing.read_text() != "keep me\n"


@pytest.mark.slow
@pytest.mark.parametrize("script,flag", [("finetune_prefix.py", "--train_file"), ("evaluate.py", "--data")])
def test_a_directory_where_a_file_is_expected_is_one_line(runs, script, flag, tmp_path):
    args = ([f"--base={runs['base']}/best.pt", f"--val_file={runs['task']}", f"--out_dir={tmp_path}/o"]
            if script == "finetune_prefix.py" else [f"--base={runs['base']}/best.pt"])
    one_line_error(run(script, *args, f"{flag}={runs['dir']}", "--device=cpu", check=False), str(runs["dir"]))


@pytest.mark.slow
def test_nan_weights_are_never_saved_even_by_a_signal(runs, tmp_path):
    """Divergence, then SIGTERM before the next log step could notice: the signal's save is refused,
    and the last good checkpoint stays."""
    out = tmp_path / "run"
    run("train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2", *TINY)
    good = (out / "last.pt").read_bytes()
    proc = subprocess.Popen([sys.executable, "train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}",
                             "--resume", "--max_iters=1000000", "--log_interval=1000000", "--eval_interval=0",
                             "--learning_rate=1e30", "--min_lr=1e30", "--grad_clip=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "resuming" in proc.stdout.readline() + proc.stdout.readline()
    time.sleep(3)   # hundreds of steps at lr 1e30: the weights are NaN long before any log step
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and stderr.count("\n") == 1, stderr
    assert "not saving" in stderr and "NaN or inf" in stderr and "last good checkpoint is kept" in stderr
    assert (out / "last.pt").read_bytes() == good and not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_divergence_in_the_last_step_without_evaluations_fails_and_keeps_the_checkpoint(runs, tmp_path):
    out = tmp_path / "run"
    run("train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2", *TINY)
    good, summary = (out / "last.pt").read_bytes(), (out / "summary.json").read_bytes()
    res = run("train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}", "--resume", "--max_iters=6",
              "--eval_interval=0", "--log_interval=1000", "--learning_rate=1e30", "--min_lr=1e30", "--grad_clip=0",
              check=False)
    one_line_error(res, "last good checkpoint is kept")
    assert res.returncode == 1 and (out / "last.pt").read_bytes() == good
    assert (out / "summary.json").read_bytes() == summary   # the good run's summary, not a NaN one
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_the_checkpoint_survives(runs, tmp_path):
    out = tmp_path / "run"
    run("train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2", *TINY)
    good = snapshot(out)
    limit = len(good["last.pt"]) // 2   # files may not grow past half a checkpoint: the next save runs out of room

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails instead of killing us
    res = subprocess.run([sys.executable, "train.py", f"--data_dir={runs['corpus']}", f"--out_dir={out}",
                          "--resume", "--max_iters=4"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         preexec_fn=small_disk)
    one_line_error(res, "could not write", f"{out}{os.sep}", ".pt (File too large)", "left as it was")
    after = snapshot(out)
    assert all(after[name] == good[name] for name in ("last.pt", "best.pt")) and not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_while_tuning_a_prefix_keeps_the_best_one(runs, tmp_path):
    out = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "finetune_prefix.py", f"--base={runs['base']}/best.pt",
                             f"--train_file={runs['task']}", f"--val_file={runs['task']}", f"--out_dir={out}",
                             "--n_prefix=2", "--batch_size=2", "--max_iters=1000000", "--eval_interval=5",
                             "--log_interval=1", "--device=cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("iter 12/"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "stopped by signal 2" in stdout and "the best prefix" in stdout and "is kept in" in stdout
    model, _ = load_model(f"{runs['base']}/best.pt")
    _, meta = load_prefix(str(out / "prefix.pt"), model)
    assert meta["metrics"]["iter"] >= 5


@pytest.mark.slow
def test_sample_refuses_nan_and_damaged_checkpoints_in_one_line(runs, tmp_path):
    blob = torch.load(runs["base"] / "best.pt", weights_only=True)
    blob["model"]["lm_head.weight"][0, 0] = float("nan")
    blob["weights_sha256"] = state_checksum(blob["model"])
    torch.save(blob, tmp_path / "nan.pt")
    one_line_error(run("sample.py", f"--base={tmp_path}/nan.pt", check=False), "NaN or inf")
    one_line_error(run("sample.py", f"--base={runs['dir']}/task.jsonl", check=False), "is not a checkpoint")
    one_line_error(run("sample.py", f"--base={runs['base']}/best.pt", "--device=cuda:7", check=False),
                   "is not available on this machine")
