"""
compare.py — the PEFT family side by side on one frozen base: methods × seeds × training-set sizes.

    python compare.py --quick                    # a small grid (minutes), the table and plots
    python compare.py                            # the full grid of the README's results section
    python compare.py --methods=prefix,lora --seeds=0,1,2 --sizes=50,200,0 --steps=150

Every method trains through the same loop (tuning.tune) for the same steps and batch size; its learning
rate is picked from a small grid on val (seed 0, all the data), then used for every seed and size.
Scores: loss on the val completions (nats per token), BLEU-4 on test MRs by greedy decoding (E2E), and
forgetting: the tuned model's loss on the pretraining corpus's val split beside the base's. A prefix,
removed, leaves the base exactly as it was, so its forgetting is measured on the base itself.
"fewshot" trains nothing: a task description and as many demonstrations as fit the context, in the prompt.

Each finished cell is one line of <out_dir>/results.jsonl, appended whole; a rerun skips the cells
already there, so an interrupted grid resumes. Writes <out_dir>/results.md and the plots beside it.
"""
import contextlib
import copy
import io
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from checkpoint import load_model
from cli import main_guard, parse, setting
from data.bins import load_bin
from data.files import atomic_write, write_atomic
from data.tasks import TaskExample, load_task, read_jsonl
from data.tokenizer import get_tokenizer
from methods import METHODS, attach
from metrics import corpus_bleu
from model import room_after
from prefix import PREFIX_METHODS, count_parameters
from runlog import CellLog, fmt_time
from runtime import DEVICE_PATTERN, setup_runtime
from scoring import complete, full_split_loss, task_loss
from tuning import TuneSettings, make_prefix, tune

LR_GRID = {"prefix": [1e-2, 3e-2, 1e-1], "prefix-reparam": [1e-3, 3e-3, 1e-2], "prompt": [1e-2, 3e-2, 1e-1],
           "lora": [1e-3, 3e-3, 1e-2], "adapter": [1e-3, 3e-3, 1e-2], "bitfit": [1e-3, 3e-3, 1e-2],
           "ft-top2": [3e-4, 1e-3, 3e-3], "ft": [3e-4, 1e-3, 3e-3]}
DESCRIPTION = "Describe the restaurant in one sentence, using every attribute given.\n"


@dataclass
class CompareConfig:
    base: str = "out/demo/base/best.pt"       # the frozen base (make demo pretrains it)
    corpus: str = "data/demo"                 # its pretraining corpus (val.bin): for the forgetting column
    task_dir: str = "data/e2e"                # train.jsonl, val.jsonl, test.jsonl
    out_dir: str = "out/compare"
    methods: list[str] = setting(list(METHODS) + ["fewshot"], choices=METHODS + ("fewshot",))
    seeds: list[int] = setting([0, 1, 2], min=0)
    sizes: list[int] = setting([50, 100, 200, 500, 0], min=0)   # training examples; 0 = all
    p_sweep: list[int] = setting([1, 5, 10, 20, 50], min=1)     # prefix lengths tried (prefix, all data)
    n_prefix: int = setting(10, min=1)
    steps: int = setting(150, min=1)
    batch_size: int = setting(16, min=1)
    lr_grid: bool = True            # pick each method's learning rate on val; false: the grid's middle value
    val_examples: int = setting(200, min=1)   # val completions scored (the same ones for every cell)
    test_prompts: int = setting(30, min=0)    # test MRs decoded for BLEU (0: no BLEU)
    corpus_tokens: int = setting(100_000, min=1000)   # of the corpus's val split, for forgetting
    quick: bool = False             # a small grid to see it work: 2 seeds, sizes 50 and all, 40 steps
    device: str = setting("auto", pattern=DEVICE_PATTERN)


def subset(examples, size: int, seed: int):
    return examples if not size or size >= len(examples) else random.Random(seed).sample(examples, size)


def fewshot_examples(examples, demos, tokenizer, room: int):
    """Each example with a task description and as many demonstrations as fit in `room` tokens put in
    front of its prompt; no loss on them (they are prompt). Returns (examples, demonstrations used)."""
    out, used = [], []
    description = tokenizer.encode(DESCRIPTION)
    for e in examples:
        head = description if len(description) + len(e.tokens) <= room else []   # a short context: no room
        k = 0
        for d in demos:
            shot = d.tokens + [tokenizer.eot_token]
            if len(head) + len(shot) + len(e.tokens) > room:
                break
            head, k = head + shot, k + 1
        out.append(TaskExample(head + e.tokens, len(head) + e.n_prompt, e.prompt, e.completion))
        used.append(k)
    return out, used


def bleu_of(model, tokenizer, prefix, test, n, prompt_head=""):
    if not n:
        return None
    refs = {}
    for r in test:
        refs.setdefault(r["prompt"], []).append(r["completion"].strip())
    prompts = list(refs)[:n]
    # the task description goes in front of a prompt only when it leaves room to answer
    room = model.config.block_size - 32
    heads = [prompt_head if len(tokenizer.encode(prompt_head + p)) <= room else "" for p in prompts]
    hyps = complete(model, tokenizer, [prefix], [h + p for h, p in zip(heads, prompts)], max_new_tokens=160)[0]
    return corpus_bleu(hyps, [refs[p] for p in prompts])


def run_cell(cfg, rt, base, tokenizer, data, method, seed, size, lr, n_prefix) -> dict:
    """Tune one method once; return its scores (the best val state is restored before scoring)."""
    torch.manual_seed(seed)
    t0 = time.time()
    model, n_base = copy.deepcopy(base), base.num_params(non_embedding=False)
    if method == "fewshot":
        val, ks = fewshot_examples(data["val"], data["train"][:8], tokenizer, model.config.block_size)
        return {"val_loss": task_loss(model, None, val), "trainable": 0, "percent": 0.0, "shots": max(ks),
                "bleu": bleu_of(model, tokenizer, None, data["test"], cfg.test_prompts, DESCRIPTION),
                "forgetting": data["corpus_base"], "seconds": time.time() - t0}
    attach(method, model)
    settings = TuneSettings(method, lr, cfg.steps, cfg.batch_size, seed, n_prefix=n_prefix,
                            eval_interval=max(cfg.steps // 3, 1))
    prefix = make_prefix(settings, model, tokenizer, rt.device) if method in PREFIX_METHODS else None
    trainable = prefix if prefix is not None else model
    best_state = {}

    def keep(best):   # in memory: the grid writes nothing but its results
        best_state.update({k: v.detach().clone() for k, v in trainable.state_dict().items()})
    train = subset(data["train"], size, seed)
    room = room_after(n_prefix if prefix is not None else 0, model.config.block_size)
    train = [e for e in train if len(e.tokens) <= room]
    with contextlib.redirect_stdout(io.StringIO()):
        summary = tune(settings, rt, model, prefix, train, data["val"], data["val_base"], keep)
    trainable.load_state_dict(best_state)
    counts = count_parameters(model, prefix, n_base)
    forgetting = data["corpus_base"] if prefix is not None else full_split_loss(
        model, data["corpus"], model.config.block_size, 16, rt.device, max_tokens=cfg.corpus_tokens)
    return {"val_loss": summary["best_val_loss"], "trainable": counts["trainable"], "percent": counts["percent"],
            "bleu": bleu_of(model, tokenizer, prefix, data["test"], cfg.test_prompts),
            "forgetting": forgetting, "seconds": time.time() - t0}


def cell(cfg, rt, base, tokenizer, data, results, method, lr, seed, size, p, t0) -> dict:
    """One grid cell: its row from results.jsonl, or run now and appended there."""
    key = f"run|{method}|{lr}|{seed}|{size}|{p}|{cfg.steps}|{cfg.batch_size}"
    if key not in results.rows:
        row = run_cell(cfg, rt, base, tokenizer, data, method, seed, size, lr, p)
        results.add({"cell": key, "kind": "run", "method": method, "lr": lr, "seed": seed, "size": size,
                     "n_prefix": p, **row})
        r = results.rows[key]
        print(f"{method:15} seed {seed} size {size or 'all':>4} P {p:>2} lr {lr:.0e} | val loss "
              f"{r['val_loss']:.4f} | BLEU {r['bleu'] if r['bleu'] is None else round(r['bleu'], 2)} | "
              f"{r['seconds']:.0f} s | {fmt_time(time.time() - t0)} so far", flush=True)
    return results.rows[key]


def pick_lr(cfg, rt, base, tokenizer, data, results, method, t0) -> float:
    """The grid's learning rate with the lowest val loss for seed 0 on all the data. Those runs are the
    grid's own seed-0 cells, so picking costs only the rates that lose."""
    grid = LR_GRID[method] if cfg.lr_grid else LR_GRID[method][1:2]
    losses = {lr: cell(cfg, rt, base, tokenizer, data, results, method, lr, 0, 0, cfg.n_prefix, t0)["val_loss"]
              for lr in grid}
    return min(losses, key=lambda lr: losses[lr] if math.isfinite(losses[lr]) else math.inf)


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def table(rows, base_val, base_corpus, base_bleu) -> str:
    """Markdown: one line a method, on all the training data, mean ± std over seeds."""
    lines = ["| method | trainable parameters | val loss | BLEU-4 | forgetting: corpus val loss | seconds a run |",
             "|---|---|---|---|---|---|",
             f"| base alone | 0 | {base_val:.3f} | {'n/a' if base_bleu is None else f'{base_bleu:.2f}'} | "
             f"{base_corpus:.3f} | |"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        params = mine[0]["trainable"]
        bleu = mean_std([r["bleu"] for r in mine])
        lines.append(f"| {method}{' (k=%d)' % mine[0]['shots'] if method == 'fewshot' else ''} | {params:,} "
                     f"({mine[0]['percent']:.2f}%) | {mean_std([r['val_loss'] for r in mine])} | {bleu} | "
                     f"{mean_std([r['forgetting'] for r in mine])} | {statistics.mean(r['seconds'] for r in mine):.1f} |")
    return "\n".join(lines)


def plots(rows, sweep, out_dir, base_val):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    full = [r for r in rows if r["size"] == 0 and r["method"] != "fewshot"]
    for method in dict.fromkeys(r["method"] for r in full):
        mine = [r for r in full if r["method"] == method]
        axes[0].errorbar(mine[0]["trainable"], np.mean([r["val_loss"] for r in mine]),
                         yerr=np.std([r["val_loss"] for r in mine]), fmt="o", capsize=3, label=method)
    axes[0].set(xscale="log", xlabel="trainable parameters", ylabel="val loss", title="score against size")
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "fewshot"):
        mine = sorted({r["size"] for r in rows if r["method"] == method}, key=lambda s: s or math.inf)
        ys = [np.mean([r["val_loss"] for r in rows if r["method"] == method and r["size"] == s]) for s in mine]
        axes[1].plot([s or max(x for x in mine if x) * 2 for s in mine], ys, "o-", label=method)
    axes[1].set(xscale="log", xlabel="training examples (rightmost: all)", ylabel="val loss", title="low data")
    if sweep:
        ps = sorted({r["n_prefix"] for r in sweep})
        axes[2].plot(ps, [np.mean([r["val_loss"] for r in sweep if r["n_prefix"] == p]) for p in ps], "o-")
    axes[2].set(xscale="log", xlabel="prefix length P", ylabel="val loss", title="prefix length")
    for ax in axes:
        ax.axhline(base_val, color="gray", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(os.path.join(out_dir, "results.png"), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(argv):
    cfg = CompareConfig()
    seen = parse(argv, cfg, prog="compare.py", description=__doc__.split("\n\n")[0])
    if cfg.quick:   # a smaller grid, except where a setting was given explicitly
        small = dict(seeds=cfg.seeds[:2], sizes=[50, 0], p_sweep=[1, 10], steps=40, lr_grid=False,
                     val_examples=64, test_prompts=5)
        cfg = replace(cfg, **{k: v for k, v in small.items() if k not in seen})
    rt = setup_runtime(cfg.device, "float32", 0)
    base, ckpt = load_model(cfg.base, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    block = base.config.block_size
    data = {name: load_task(os.path.join(cfg.task_dir, f"{name}.jsonl"), tokenizer, room_after(max(cfg.p_sweep + [cfg.n_prefix]), block))[0]
            for name in ("train", "val")}
    data["val"] = data["val"][:cfg.val_examples]
    data["test"] = read_jsonl(os.path.join(cfg.task_dir, "test.jsonl"))
    data["corpus"] = load_bin(cfg.corpus)[1]
    data["val_base"] = task_loss(base, None, data["val"])
    data["corpus_base"] = full_split_loss(base, data["corpus"], block, 16, rt.device, max_tokens=cfg.corpus_tokens)
    base_bleu = bleu_of(base, tokenizer, None, data["test"], cfg.test_prompts)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results = CellLog(os.path.join(cfg.out_dir, "results.jsonl"))
    t0, rows, sweep = time.time(), [], []
    print(f"base alone: val loss {data['val_base']:.4f} | corpus val loss {data['corpus_base']:.4f} | "
          f"{len(data['train'])} train, {len(data['val'])} val examples | {cfg.steps} steps, batch {cfg.batch_size}")
    for method in cfg.methods:
        lr = 0.0 if method == "fewshot" else pick_lr(cfg, rt, base, tokenizer, data, results, method, t0)
        runs = [(seed, size, cfg.n_prefix) for seed in cfg.seeds for size in cfg.sizes]
        if method == "prefix":
            runs += [(seed, 0, p) for seed in cfg.seeds for p in cfg.p_sweep if p != cfg.n_prefix]
        if method == "fewshot":
            runs = [(0, 0, 0)]    # nothing is trained: no seed or size changes it
        for seed, size, p in runs:
            r = cell(cfg, rt, base, tokenizer, data, results, method, lr, seed, size, p, t0)
            if method == "prefix" and size == 0:
                sweep.append(r)                       # the prefix-length curve
            if not (method == "prefix" and p != cfg.n_prefix):
                rows.append(r)                        # the table and the low-data curves
    md = table([r for r in rows if r["size"] == 0], data["val_base"], data["corpus_base"], base_bleu)
    write_atomic(os.path.join(cfg.out_dir, "results.md"), md + "\n")
    plots(rows, sweep, cfg.out_dir, data["val_base"])
    print(f"\n{md}\n\n{len(rows) + len(sweep)} runs; this invocation took {fmt_time(time.time() - t0)}; "
          f"wrote {cfg.out_dir}/results.md, results.png, results.jsonl")


if __name__ == "__main__":
    main_guard(main)
