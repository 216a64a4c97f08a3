"""
bench.py — pretraining speed and loss against nanoGPT, measured in one run on the same machine.

    python bench.py                                   # prefixgpt alone, nanoGPT's CPU "baby" config
    python bench.py --nanogpt_dir=../nanoGPT          # and nanoGPT itself, one after the other

Both train nanoGPT's README "baby" settings (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
iterations, lr 1e-3, dropout 0, on CPU) on Tiny Shakespeare, one after the other, never at the same
time. Wall-clock times only compare within one run (machines of the same type differ by 2x between
days), so the ratio is the number to read. nanoGPT needs its char-level data first:
`cd ../nanoGPT && python data/shakespeare_char/prepare.py` (it downloads input.txt; copy one in to
work offline). Byte tokens on Tiny Shakespeare are the same sequence as nanoGPT's characters, so the
validation losses compare directly. prefixgpt's data: `python data/shakespeare/prepare.py`.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from cli import main_guard, parse

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


def run_prefixgpt(cfg: BenchConfig, out_dir: str) -> dict:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_baby.toml", f"--out_dir={out_dir}",
           f"--max_iters={cfg.max_iters}", f"--lr_decay_iters={cfg.max_iters}", f"--seed={cfg.seed}",
           "--plot=false"]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise ValueError(f"prefixgpt failed: {res.stderr.strip().splitlines()[-1]}")
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        ms = [row["ms_per_iter"] for row in map(json.loads, f) if "ms_per_iter" in row]
    return {"wall_s": wall, "train_s": summary["train_seconds"], "median_ms": statistics.median(ms),
            "val_loss": summary["final_val_loss"], "val_loss_full": summary["final_val_loss_full_split"]}


def run_nanogpt(cfg: BenchConfig, out_dir: str) -> dict:
    root = cfg.nanogpt_dir
    if not os.path.isfile(os.path.join(root, "train.py")):
        raise FileNotFoundError(f"{root}/train.py not found: --nanogpt_dir must be a nanoGPT checkout")
    if not os.path.isfile(os.path.join(root, "data", "shakespeare_char", "train.bin")):
        raise FileNotFoundError(f"{root}/data/shakespeare_char/train.bin not found: run "
                                f"`python data/shakespeare_char/prepare.py` in {root} first")
    cmd = [sys.executable, "train.py", *NANOGPT_BABY, f"--max_iters={cfg.max_iters}",
           f"--lr_decay_iters={cfg.max_iters}", f"--out_dir={out_dir}"]
    print(f"$ (cd {root} && {' '.join(cmd)})", flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall = time.time() - t0
    if res.returncode != 0:
        raise ValueError(f"nanoGPT failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    # "iter 12: loss 3.1, time 41.20ms, ..." — an iteration that evaluated also holds the eval's time,
    # so the median is the per-step figure; evals are subtracted from the total below.
    times = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", res.stdout, re.M)]
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", res.stdout, re.M)
    if not times or not evals:
        raise ValueError("could not read nanoGPT's log: is --nanogpt_dir an unmodified nanoGPT?")
    median = statistics.median(times)
    # training time = the sum of the step times, with each eval step counted at the median
    train_s = (sum(times) - sum(sorted(times)[-len(evals):]) + len(evals) * median) / 1000
    return {"wall_s": wall, "train_s": train_s, "median_ms": median, "val_loss": float(evals[-1][2]),
            "val_loss_full": None}


def main(argv):
    cfg = BenchConfig()
    parse(argv, cfg, prog="bench.py", description=__doc__.split("\n\n")[0])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["prefixgpt"] = run_prefixgpt(cfg, os.path.join(tmp, "prefixgpt"))
        if cfg.nanogpt_dir:
            results["nanoGPT"] = run_nanogpt(cfg, os.path.join(tmp, "nanogpt"))
    print(f"\nnanoGPT's CPU baby config, {cfg.max_iters} iterations, one after the other on this machine:")
    print(f"{'':10} {'wall s':>8} {'train s':>8} {'median ms/iter':>15} {'val (20-batch est.)':>20} "
          f"{'val (whole split)':>18}")
    for name, r in results.items():
        full = "—" if r["val_loss_full"] is None else f"{r['val_loss_full']:.4f}"
        print(f"{name:10} {r['wall_s']:8.1f} {r['train_s']:8.1f} {r['median_ms']:15.1f} "
              f"{r['val_loss']:20.4f} {full:>18}")
    if "nanoGPT" in results:
        a, b = results["prefixgpt"], results["nanoGPT"]
        print(f"\nprefixgpt / nanoGPT: wall time x{a['wall_s'] / b['wall_s']:.2f}, "
              f"training time x{a['train_s'] / b['train_s']:.2f}, ms/iter x{a['median_ms'] / b['median_ms']:.2f}")
    return results


if __name__ == "__main__":
    main_guard(main)
