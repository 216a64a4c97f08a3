"""
bench.py — pretraining speed and loss against nanoGPT, measured in one run on the same machine.

    python bench.py                                   # prefixgpt alone, nanoGPT's CPU "baby" config
    python bench.py --nanogpt_dir=../nanoGPT          # and nanoGPT itself, taking turns with prefixgpt

Both train nanoGPT's README "baby" settings (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
iterations, lr 1e-3, dropout 0, on CPU) on Tiny Shakespeare. The two runs never share the CPU: they
take turns, each stopped (SIGSTOP) while the other runs, swapping every --slice_s seconds. Machines
of this type have fast and slow spells (step times here swing between ~35 and ~47 ms within minutes),
and taking turns puts both runs through the same spells, so their ratio is the number to read.
nanoGPT needs its char-level data first: `cd ../nanoGPT && python data/shakespeare_char/prepare.py`
(it downloads input.txt; copy one in to work offline). Byte tokens on Tiny Shakespeare are the same
sequence as nanoGPT's characters, so the losses compare directly; both models are also scored the
same way at the end, over the whole val split, by this repo's code (model.py with gelu="exact" is
nanoGPT's architecture, so nanoGPT's checkpoint loads into it key for key).
prefixgpt's data: `python data/shakespeare/prepare.py`.
"""
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from checkpoint import load_model, safe_torch_load
from cli import main_guard, parse
from model import GPT, GPTConfig
from scoring import full_split_loss

# nanoGPT's README command for a CPU ("baby" model), flag for flag; --max_iters and --lr_decay_iters
# (2000 there) are added from --max_iters
NANOGPT_BABY = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--dropout=0.0"]


@dataclass
class BenchConfig:
    nanogpt_dir: str = ""     # a checkout of github.com/karpathy/nanoGPT; empty = prefixgpt only
    max_iters: int = 2000     # fewer for a quick look (the loss is then not comparable)
    seed: int = 1337
    slice_s: float = 2.0      # with nanoGPT: seconds each run gets before the other one's turn


class Job:
    """A training run as a process, with its log file and the seconds it spent running (not stopped)."""

    def __init__(self, name, cmd, cwd, log_path):
        self.name, self.cmd, self.cwd, self.log_path = name, cmd, cwd, log_path
        self.active_s, self.turns, self.proc = 0.0, 0, None

    def start(self):
        print(f"$ (cd {self.cwd} && {' '.join(self.cmd)})", flush=True)
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()


def take_turns(jobs: list[Job], slice_s: float):
    """Run the jobs one at a time in turns of slice_s seconds until all have exited; the others wait
    stopped (a job starts at its first turn). Each job's active_s is the time it spent running."""
    alive = list(jobs)
    try:
        while alive:
            job = alive.pop(0)
            if job.proc is None:
                job.start()
            else:
                os.kill(job.proc.pid, signal.SIGCONT)
            job.turns += 1
            t0 = time.perf_counter()
            try:
                job.proc.wait(timeout=slice_s if alive else None)   # alone: no reason to stop it
                job.log.close()
            except subprocess.TimeoutExpired:
                os.kill(job.proc.pid, signal.SIGSTOP)
                alive.append(job)
            job.active_s += time.perf_counter() - t0
    finally:
        for job in alive:   # interrupted: leave no stopped process behind
            if job.proc is not None:
                job.proc.kill()
    for job in jobs:
        if job.proc.returncode != 0:
            last = (job.output().strip().splitlines() or ["?"])[-1]
            raise ValueError(f"{job.name} failed (exit {job.proc.returncode}): {last}")


def training_seconds(ms_per_iter: list[float], n_outliers: int) -> float:
    """Sum of the step times, with the n_outliers longest (steps that held a pause for the other run's
    turn, or an evaluation) counted at the median step time instead."""
    median = statistics.median(ms_per_iter)
    kept = sorted(ms_per_iter)[:len(ms_per_iter) - n_outliers]
    return (sum(kept) + n_outliers * median) / 1000


def whole_split_loss(model, val_path: str, block_size: int) -> float:
    """Loss over every block_size window of a val.bin, the same function for both runs."""
    data = np.fromfile(val_path, dtype=np.uint16)
    return full_split_loss(model, data, block_size, 64, "cpu", contextlib.nullcontext())


def prefixgpt_job(cfg: BenchConfig, out_dir: str) -> Job:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_baby.toml", f"--out_dir={out_dir}",
           f"--max_iters={cfg.max_iters}", f"--lr_decay_iters={cfg.max_iters}", f"--seed={cfg.seed}",
           "--log_interval=1", "--plot=false"]
    return Job("prefixgpt", cmd, os.getcwd(), out_dir + ".log")


def prefixgpt_result(job: Job, out_dir: str) -> dict:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    ms = [r["ms_per_iter"] for r in rows if "ms_per_iter" in r]
    evals = [r for r in rows if "val_loss" in r]
    model, ckpt = load_model(os.path.join(out_dir, "best.pt"))
    data_dir = ckpt["train_config"]["data_dir"]
    return {"active_s": job.active_s, "train_s": training_seconds(ms, job.turns - 1),
            "median_ms": statistics.median(ms), "val_loss": evals[-1]["val_loss"],
            "val_loss_full": whole_split_loss(model, os.path.join(data_dir, "val.bin"), model.config.block_size)}


def nanogpt_job(cfg: BenchConfig, out_dir: str) -> Job:
    root = cfg.nanogpt_dir
    if not os.path.isfile(os.path.join(root, "train.py")):
        raise FileNotFoundError(f"{root}/train.py not found: --nanogpt_dir must be a nanoGPT checkout")
    if not os.path.isfile(os.path.join(root, "data", "shakespeare_char", "train.bin")):
        raise FileNotFoundError(f"{root}/data/shakespeare_char/train.bin not found: run "
                                f"`python data/shakespeare_char/prepare.py` in {root} first")
    cmd = [sys.executable, "train.py", *NANOGPT_BABY, f"--max_iters={cfg.max_iters}",
           f"--lr_decay_iters={cfg.max_iters}", f"--out_dir={out_dir}"]
    return Job("nanoGPT", cmd, root, out_dir + ".log")


def nanogpt_result(job: Job, cfg: BenchConfig, out_dir: str) -> dict:
    text = job.output()
    # "iter 12: loss 3.1, time 41.20ms, ..." — an iteration that evaluated also holds the eval's time
    times = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", text, re.M)]
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", text, re.M)
    if not times or not evals:
        raise ValueError("could not read nanoGPT's log: is --nanogpt_dir an unmodified nanoGPT?")
    # its best checkpoint, in this repo's GPT: the same architecture, the same parameter names
    ckpt = safe_torch_load(os.path.join(out_dir, "ckpt.pt"), "nanoGPT checkpoint")
    model = GPT(GPTConfig(**{k: ckpt["model_args"][k] for k in
                             ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}, gelu="exact"))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    val_path = os.path.join(cfg.nanogpt_dir, "data", "shakespeare_char", "val.bin")
    return {"active_s": job.active_s, "train_s": training_seconds(times, job.turns - 1 + len(evals)),
            "median_ms": statistics.median(times), "val_loss": float(evals[-1][2]),
            "val_loss_full": whole_split_loss(model.eval(), val_path, model.config.block_size)}


def main(argv):
    cfg = BenchConfig()
    parse(argv, cfg, prog="bench.py", description=__doc__.split("\n\n")[0])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours = os.path.join(tmp, "prefixgpt")
        jobs = [prefixgpt_job(cfg, ours)]
        if cfg.nanogpt_dir:
            theirs = os.path.join(tmp, "nanogpt")
            jobs.append(nanogpt_job(cfg, theirs))
        take_turns(jobs, cfg.slice_s)
        results["prefixgpt"] = prefixgpt_result(jobs[0], ours)
        if cfg.nanogpt_dir:
            results["nanoGPT"] = nanogpt_result(jobs[1], cfg, theirs)
    how = "taking turns" if cfg.nanogpt_dir else "alone"
    print(f"\nnanoGPT's CPU baby config, {cfg.max_iters} iterations, seed {cfg.seed}, {how} on this machine:")
    print(f"{'':10} {'active s':>9} {'train s':>8} {'median ms/iter':>15} {'val (20-batch est.)':>20} "
          f"{'val (whole split)':>18}")
    for name, r in results.items():
        print(f"{name:10} {r['active_s']:9.1f} {r['train_s']:8.1f} {r['median_ms']:15.1f} "
              f"{r['val_loss']:20.4f} {r['val_loss_full']:18.4f}")
    if "nanoGPT" in results:
        a, b = results["prefixgpt"], results["nanoGPT"]
        print(f"\nprefixgpt / nanoGPT: active time x{a['active_s'] / b['active_s']:.3f}, "
              f"training time x{a['train_s'] / b['train_s']:.3f}, ms/iter x{a['median_ms'] / b['median_ms']:.3f}")
    return results


if __name__ == "__main__":
    main_guard(main)
