"""
compare.py — the PEFT family side by side on one frozen base: methods × seeds × training-set sizes;
and across bases pretrained for longer.

    python experiments/compare.py --quick                    # a small grid (minutes), the table and plots
    python experiments/compare.py                            # the full grid of docs/family.md
    python experiments/compare.py --methods=prefix,lora --seeds=0,1,2 --sizes=50,200,0 --steps=150
    python experiments/compare.py --task=sst2 --quick        # SST-2 (python data/sst2/prepare.py makes data/sst2)

Every method trains through the same loop (tuning.tune) for the same steps and batch size; its learning
rate is picked from a small grid on val (seed 0, all the data), then used for every seed and size.
Scores: loss on the val completions (nats per token); on test, greedy decodings of the MRs scored by
E2E's five metrics (BLEU-4, NIST, METEOR, ROUGE-L, CIDEr: prefixgpt/nlg_metrics.py) and the facts they
carry (facts %, names %: prefixgpt/facts.py), with Li & Liang's numbers printed beside the table (E2E),
or accuracy and macro-F1 of the likelier label (SST-2: the labels of task_dir/meta.json); and
forgetting: the tuned model's loss on the pretraining corpus's val split beside the base's. A prefix,
removed, leaves the base exactly as it was, so its forgetting is measured on the base itself.
"fewshot" trains nothing: a description of the task and as many demonstrations as fit the context, in
the prompt; on SST-2 they come in rounds of one per label, so every label is shown as often.

The base-budget axis (--bases): every method also runs on each of those bases (every seed, all the data,
its learning rate picked per base), and results.md gets the base-budget tables: a line a base (its
pretraining iterations, its corpus val loss, its own val loss on the task), then a line a method and a
column a base for the val loss, the first test score (BLEU-4, accuracy) and the share of the gap between
the base alone and ft that the method closes, (base - method) / (base - ft) per seed. results_bases.png
draws that share for each method against the bases' pretraining iterations. Bases of 1×, 6× and 16× the
demo's pretraining (400 steps; the 1× is the demo's own base, made by `make demo` with its corpus; the 6×
is `demo.py --long`'s), as docs/family.md's table was run:

    python train.py config/demo_pretrain.toml --max_iters=6400 --lr_decay_iters=6400 --eval_interval=6400 \
        --out_dir=out/base_16x
    python experiments/compare.py --bases=out/demo/base/best.pt,out/demo_long/base/best.pt,out/base_16x/best.pt \
        --sizes=0 --p_sweep=10 --steps=100 --init=text --test_prompts=20

Learning rates: each method's is picked on val from LR_GRID (seed 0, all the data): by val loss, or on a
classification task by the val label loss (-log p of the true label among the labels: the decision, not
the answer's format, which is most of its val loss; --pick_on chooses); a pick at either end of the grid
is bracketed (--lr_bracket): the next rate out is tried until one is worse.

Each finished cell is one line of <out_dir>/results.jsonl, appended whole and keyed by the task, the
base's weights (their fingerprint), the cell's settings and how many val and test examples scored it;
a rerun skips the cells already there, so an interrupted grid resumes, while another base or task in
the same out_dir runs cells of its own.
Writes <out_dir>/results.md and the plots beside it.

Cells are independent runs, so several processes can share a grid (each on its own GPU where there are
several; on a CPU, each on a share of the cores):

    torchrun --standalone --nproc_per_node=4 experiments/compare.py --quick

Every process walks the same grid; of each list of cells that can run at once (the seed-0 rate cells of
every method, then every seed, size and prefix length at the picked rates) process r runs those at
positions r, r + N, ... and then waits until the others' rows are in results.jsonl (the one file they
share, appended a whole line at a time); a rate past the grid's edge is run by one process, chosen by its
key, while the others wait for it. Process 0 prints the grid and writes results.md.
"""
import contextlib
import copy
import hashlib
import io
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.bins import load_bin  # noqa: E402
from data.files import atomic_write, write_atomic  # noqa: E402
from data.tasks import demonstrations, fewshot_heads, load_task, read_jsonl, read_labels, with_heads  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from model import room_after  # noqa: E402
from prefix import PREFIX_METHODS, count_parameters  # noqa: E402
from prefixgpt import metrics  # noqa: E402
from prefixgpt.checkpoint import load_model, weights_fingerprint  # noqa: E402
from prefixgpt.cli import main_guard, one_line, parse, setting  # noqa: E402
from prefixgpt.distributed import Parallel, quiet_unless_master  # noqa: E402
from prefixgpt.methods import METHODS, attach  # noqa: E402
from prefixgpt.nlg_metrics import li_liang_numbers  # noqa: E402
from prefixgpt.metrics import mean_std  # noqa: E402
from prefixgpt.optim import make_adamw  # noqa: E402
from prefixgpt.runlog import CellLog, fmt_time  # noqa: E402
from prefixgpt.runtime import DEVICE_PATTERN, setup_runtime  # noqa: E402
from prefixgpt.scoring import E2E_KEYS, classify, e2e_on_rows, full_split_loss, label_candidates, task_loss  # noqa: E402
from prefixgpt.tuning import TuneConfig, make_prefix, tune  # noqa: E402

LR_GRID = {"prefix": [1e-2, 3e-2, 1e-1], "prefix-reparam": [1e-3, 3e-3, 1e-2], "prompt": [1e-2, 3e-2, 1e-1],
           "lora": [1e-3, 3e-3, 1e-2], "adapter": [1e-3, 3e-3, 1e-2], "bitfit": [1e-3, 3e-3, 1e-2],
           "ft-top2": [3e-4, 1e-3, 3e-3], "ft": [3e-4, 1e-3, 3e-3]}
MAX_EXTRA_RATES = 3   # --lr_bracket: rates tried past the grid's edge before the edge's best is taken as it is
DESCRIPTIONS = {   # the tasks compare.py knows, and the line a few-shot prompt starts with for each
    "e2e": "Describe the restaurant in one sentence, using every attribute given.\n",
    "sst2": "Say whether each movie review is positive or negative.\n",
}
INIT_TEXT = {"e2e": "name eatType food area near", "sst2": "the movie review is positive or negative"}   # --init=text
# test columns, row key → heading: for E2E, e2e_on_rows' keys (scoring.E2E_KEYS) and the facts it carries
SCORES = {"e2e": {**{k: "BLEU-4" if name == "BLEU" else name for k, name in E2E_KEYS.items()},
                  "facts": "facts %", "names": "names %"},
          "sst2": {"accuracy": "accuracy", "macro_f1": "macro-F1"}}


@dataclass
class CompareConfig:
    base: str = "out/demo/base/best.pt"       # the frozen base (make demo pretrains it)
    bases: list[str] = setting([])            # the base-budget axis: every method on each of these too
    corpus: str = "data/demo"                 # its pretraining corpus (val.bin): for the forgetting column
    task: str = setting("e2e", choices=tuple(DESCRIPTIONS))   # sst2: a classification task (meta.json's labels)
    task_dir: str = ""                        # train/val/test.jsonl (and meta.json); "": data/<task>
    out_dir: str = "out/compare"
    methods: list[str] = setting(list(METHODS) + ["fewshot"], choices=METHODS + ("fewshot",))
    seeds: list[int] = setting([0, 1, 2], min=0)
    sizes: list[int] = setting([50, 100, 200, 500, 0], min=0)   # training examples; 0 = all
    p_sweep: list[int] = setting([1, 5, 10, 20, 50], min=1)     # prefix lengths tried (prefix, all data)
    n_prefix: int = setting(10, min=1)
    init: str = setting("random", choices=("random", "text"))   # prefix/prompt start: random, or INIT_TEXT's words
    steps: int = setting(150, min=1)
    batch_size: int = setting(16, min=1)
    lr_grid: bool = True            # pick each method's learning rate on val; false: the grid's middle value
    lr_bracket: bool = True         # a pick at the grid's edge tries the next rates out, until one is worse
    pick_on: str = setting("auto", choices=("auto", "loss", "label_loss", "accuracy"))   # what picks the rate on
                                    # val; auto: label_loss on a classification task, loss on E2E (val_rank)
    val_examples: int = setting(200, min=1)   # val completions scored (the same ones for every cell)
    test_prompts: int = setting(30, min=0)    # E2E: test MRs decoded for BLEU (0: no BLEU)
    test_examples: int = setting(0, min=0)    # SST-2: test examples classified (0: all)
    corpus_tokens: int = setting(100_000, min=1000)   # of the corpus's val split, for forgetting
    quick: bool = False             # a small grid to see it work: 2 seeds, sizes 50 and all, 40 steps
    device: str = setting("auto", pattern=DEVICE_PATTERN)


def subset(examples, size: int, seed: int):
    return examples if not size or size >= len(examples) else random.Random(seed).sample(examples, size)


def task_labels(task: str, task_dir: str) -> list[str]:
    """A classification task's candidate completions (index = label); [] for a generation task."""
    labels = read_labels(task_dir)
    if task == "e2e" and labels:   # scoring SST-2 by BLEU would run, and mean nothing
        raise ValueError(f"{task_dir} holds a classification task (meta.json has labels {labels}): pass --task=sst2")
    if task != "e2e" and not labels:
        raise ValueError(f"--task={task} needs {task_dir}/meta.json with \"labels\": make it with "
                         f"python data/{task}/prepare.py --out_dir {task_dir}")
    return labels or []


@dataclass
class Base:
    """A frozen base and what every cell on it shares. data: train and val examples (tokenized for its
    tokenizer and context), test rows (and for a classification task every test row completed by every
    label, "candidates", with "y_true"), the corpus's val split, and the base alone's val and corpus loss."""
    path: str
    model: torch.nn.Module
    tokenizer: object
    data: dict
    fingerprint: str        # of its weights (checkpoint.weights_fingerprint): what its cells are keyed by
    iters: int | None       # its pretraining iterations (train.py's checkpoints); None for GPT-2's weights


def load_base(cfg, rt, path: str, task_dir: str, labels: list[str]) -> Base:
    model, ckpt = load_model(path, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    block = model.config.block_size
    room = room_after(max(cfg.p_sweep + [cfg.n_prefix]), block)   # what the longest prefix of any cell leaves
    data = {name: load_task(os.path.join(task_dir, f"{name}.jsonl"), tokenizer, room)[0] for name in ("train", "val")}
    data["room"] = room   # which examples fit decides the val set: part of every cell's key
    data["val"] = data["val"][:cfg.val_examples]
    data["test"] = read_jsonl(os.path.join(task_dir, "test.jsonl"))
    data["labels"] = labels
    if labels:   # the val rows as candidates too: a classification task's rate is picked on their label loss
        val_path = os.path.join(task_dir, "val.jsonl")
        data["val_candidates"], data["val_y"] = label_candidates(tokenizer, read_jsonl(val_path)[:cfg.val_examples],
                                                                 labels, val_path, room)
        data["test"] = data["test"][:cfg.test_examples or None]
        data["candidates"], data["y_true"] = label_candidates(tokenizer, data["test"], labels,
                                                              os.path.join(task_dir, "test.jsonl"), room)
    data["corpus"] = load_bin(cfg.corpus)[1]
    data["val_base"] = task_loss(model, None, data["val"])
    data["corpus_base"] = full_split_loss(model, data["corpus"], block, 16, rt.device, max_tokens=cfg.corpus_tokens)
    return Base(path, model, tokenizer, data, weights_fingerprint(model), ckpt.get("iter_num"))


def check_bases(paths: list[str], tokenizer: str) -> dict[str, str]:
    """Every --bases entry loads and reads the same tokens as --base (val losses in nats per token compare
    only then): checked before any cell runs. Returns each path's weight fingerprint."""
    prints = {}
    for path in dict.fromkeys(paths):
        try:
            model, ckpt = load_model(path, "cpu")
        except (OSError, ValueError) as e:
            raise ValueError(f"--bases: {one_line(e)}") from None
        if ckpt["tokenizer"] != tokenizer:
            raise ValueError(f"--bases: {path} uses the {ckpt['tokenizer']!r} tokenizer and --base {tokenizer!r}: "
                             "their val losses (nats per token) do not compare")
        prints[path] = weights_fingerprint(model)
    return prints


def test_scores(cfg, b: Base, model, prefix, candidates=None) -> dict:
    """The task's test columns: E2E's five scores of greedy decodings and the facts they carry (E2E), or
    accuracy and macro-F1 of the likelier label (classification; candidates: the test rows' candidates,
    b's unless given)."""
    if not b.data["labels"]:
        return e2e_on_rows(model, b.tokenizer, prefix, b.data["test"], cfg.test_prompts)
    scores = classify(model, prefix, candidates or b.data["candidates"], b.data["y_true"])
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


def fewshot_cell(cfg, b: Base, t0: float) -> dict:
    """Nothing trains: the base, with a description of the task and demonstrations in front of each prompt."""
    rounds = demonstrations(b.data["train"], b.data["labels"])
    description = b.tokenizer.encode(DESCRIPTIONS[cfg.task])
    eot, room = b.tokenizer.eot_token, b.model.config.block_size
    heads, ks = fewshot_heads([len(e.tokens) for e in b.data["val"]], rounds, description, eot, room)
    if b.data["labels"]:   # every label's candidate for a test row gets the same head, made for the longest
        cands = b.data["candidates"]
        longest = [max(len(c[i].tokens) for c in cands) for i in range(len(b.data["y_true"]))]
        test_heads = fewshot_heads(longest, rounds, description, eot, room)[0]
        scores = test_scores(cfg, b, b.model, None, [with_heads(c, test_heads) for c in cands])
    else:   # a decoding needs room to answer: only the description goes in front of a test MR
        scores = e2e_on_rows(b.model, b.tokenizer, None, b.data["test"], cfg.test_prompts, DESCRIPTIONS[cfg.task])
    return {"val_loss": task_loss(b.model, None, with_heads(b.data["val"], heads)), "trainable": 0, "percent": 0.0,
            "shots": max(ks), **scores, "forgetting": b.data["corpus_base"], "seconds": time.time() - t0}


def run_cell(cfg, rt, b: Base, method, seed, size, lr, n_prefix) -> dict:
    """Tune one method once; return its scores (the best val state is restored before scoring)."""
    torch.manual_seed(seed)
    t0 = time.time()
    if method == "fewshot":
        return fewshot_cell(cfg, b, t0)
    model, n_base, data = copy.deepcopy(b.model), b.model.num_params(non_embedding=False), b.data
    attach(method, model)
    # the grid's recipe: the rate decays to 0 after 10 warmup steps, every method gets all its steps (the
    # patience outlasts them) and the best val state is kept; the log stays quiet
    settings = TuneConfig(method=method, learning_rate=lr, max_iters=cfg.steps, batch_size=cfg.batch_size, seed=seed,
                          n_prefix=n_prefix, eval_interval=max(cfg.steps // 3, 1), init=cfg.init,
                          init_text=INIT_TEXT[cfg.task], min_lr=0.0, warmup_iters=10, patience=1000, log_interval=1000)
    prefix = make_prefix(settings, model, b.tokenizer, rt.device) if method in PREFIX_METHODS else None
    trainable = prefix if prefix is not None else model

    def loss_fn(x, y):   # as finetune_prefix.py's: a prefix's loss L(LM_θ(x; P), y), or the adapted model's
        return model(x, y, prefix_kv=None if prefix is None else prefix(model))[1]
    optimizer = make_adamw(trainable, lr, settings.weight_decay, device_type=rt.device_type)
    best_state = {}

    def keep(best):   # in memory: the grid writes nothing but its results
        best_state.update({k: v.detach().clone() for k, v in trainable.state_dict().items()})
    train = subset(data["train"], size, seed)
    room = room_after(n_prefix if prefix is not None else 0, model.config.block_size)
    train = [e for e in train if len(e.tokens) <= room]
    with contextlib.redirect_stdout(io.StringIO()):
        summary = tune(settings, rt, model, prefix, loss_fn, optimizer, train, data["val"], data["val_base"], keep)
    trainable.load_state_dict(best_state)
    counts = count_parameters(model, prefix, n_base)
    forgetting = data["corpus_base"] if prefix is not None else full_split_loss(
        model, data["corpus"], model.config.block_size, 16, rt.device, max_tokens=cfg.corpus_tokens)
    val = {"val_loss": summary["best_val_loss"]}
    if b.data["labels"]:
        scores = classify(model, prefix, data["val_candidates"], data["val_y"])
        val.update(val_label_loss=scores["label_loss"], val_accuracy=scores["accuracy"])
    return {**val, "trainable": counts["trainable"], "percent": counts["percent"],
            **test_scores(cfg, b, model, prefix), "forgetting": forgetting, "seconds": time.time() - t0}


WORKERS = Parallel()   # which of the processes that share this grid this one is (main sets it under torchrun)


def worker_slot(device: str) -> tuple[Parallel, str]:
    """This process's place among those torchrun started (RANK, WORLD_SIZE; rank 0 of 1 without torchrun),
    and its device: the GPU of its LOCAL_RANK where there are GPUs. The processes share nothing but
    results.jsonl, so no process group is set up."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return Parallel(rank, world, device), device


def cell_key(cfg, b: Base, method, lr, seed, size, p) -> str:
    """What a cell's row is keyed by: all that made it, the task and the base's weights too, so another base
    or task in the same out_dir runs its own cells instead of reading these."""
    init = "" if cfg.init == "random" or method not in PREFIX_METHODS else "|init=text"   # old keys stay valid
    # how many val and test examples scored it, and the room they had to fit (the grid's longest prefix
    # decides it, so --p_sweep changes the val set): a row scored on others is not the same measurement
    # (a classification cell's row also holds its val label loss, which picks the rate: "+label_loss")
    scored = (f"val={cfg.val_examples}{'+label_loss' if b.data['labels'] else ''}"
              f"|test={cfg.test_examples if b.data['labels'] else cfg.test_prompts}|room={b.data['room']}")
    return f"run|{cfg.task}|{b.fingerprint}|{method}{init}|{lr}|{seed}|{size}|{p}|{cfg.steps}|{cfg.batch_size}|{scored}"


def wait_for(results, keys: list[str], poll_s: float = 1.0):
    """Until every key has its row in results.jsonl: written by the other processes of the grid."""
    while any(k not in results.rows for k in keys):
        time.sleep(poll_s)
        results.refresh()


def spread(cfg, rt, b: Base, results, cells: list[tuple], t0):
    """Run a list of cells that do not depend on one another, shared among the grid's processes: this one
    runs positions rank, rank + world, ..., then waits for the rest. One process: nothing to do here (the
    grid runs each cell where it first needs it, in its own order)."""
    if WORKERS.world == 1:
        return
    for i, c in enumerate(cells):
        if i % WORKERS.world == WORKERS.rank:
            cell(cfg, rt, b, results, *c, t0, mine=True)
    wait_for(results, [cell_key(cfg, b, *c) for c in cells])


def cell(cfg, rt, b: Base, results, method, lr, seed, size, p, t0, mine: bool | None = None) -> dict:
    """One grid cell: its row from results.jsonl, or run now and appended there (cell_key says what the row
    is keyed by). Shared among processes, a cell nobody ran yet is run by the one spread gave it to
    (mine=True) or else by the one its key picks; the others wait for its row."""
    key = cell_key(cfg, b, method, lr, seed, size, p)
    if mine is None:
        mine = int(hashlib.sha1(key.encode()).hexdigest(), 16) % WORKERS.world == WORKERS.rank
    if key not in results.rows and not mine:
        wait_for(results, [key])
    if key not in results.rows:
        row = run_cell(cfg, rt, b, method, seed, size, lr, p)
        results.add({"cell": key, "kind": "run", "task": cfg.task, "base": b.path, "base_fingerprint": b.fingerprint,
                     "method": method, "lr": lr, "seed": seed, "size": size, "n_prefix": p, **row})
        r = results.rows[key]
        scores = " | ".join(f"{name} {'n/a' if r.get(k) is None else round(r[k], 3)}"
                            for k, name in SCORES[cfg.task].items())
        who = f"[{WORKERS.rank}/{WORKERS.world}] " if WORKERS.enabled else ""
        print(f"{who}{method:15} seed {seed} size {size or 'all':>4} P {p:>2} lr {lr:.0e} | val loss {r['val_loss']:.4f} "
              f"| {scores} | {r['seconds']:.0f} s | {fmt_time(time.time() - t0)} so far", flush=True,
              file=sys.__stdout__ if WORKERS.enabled else sys.stdout)   # every process shows its own cells
    return results.rows[key]


def next_rate(lr: float, up: bool) -> float:
    """The neighbour of lr on the grids' 1-3-10 scale: 0.1 → 0.3 → 1 going up, 0.1 → 0.03 → 0.01 down."""
    e = math.floor(math.log10(lr) + 1e-9)
    ones = round(lr / 10 ** e) < 2                                      # 1·10^e, else 3·10^e
    out = (3 * 10 ** e if ones else 10 ** (e + 1)) if up else (3 * 10 ** (e - 1) if ones else 10 ** e)
    return float(f"{out:.0e}")                                          # 0.3, not 0.30000000000000004


def val_rank(row: dict, pick_on: str = "auto") -> tuple:
    """How a learning rate's seed-0 row ranks (lower is better): a diverged run last, then by pick_on.
    auto: the val label loss where the row has one (a classification task), else the val loss. On SST-2
    the val loss is mostly the answer's format, which a faster rate learns sooner while choosing the label
    no better; val accuracy on 200 sentences, 57% of them positive, ranks a model that always answers
    " positive" above one that tries; the label loss, -log p(true label) among the labels, scores the
    decision alone. The val loss breaks ties."""
    loss = row["val_loss"]
    key = {"auto": "val_label_loss" if "val_label_loss" in row else "val_loss", "loss": "val_loss",
           "label_loss": "val_label_loss", "accuracy": "val_accuracy"}[pick_on]
    if key not in row:
        raise ValueError(f"--pick_on={pick_on} needs a classification task (its rows hold {key})")
    value = -row[key] if key == "val_accuracy" else row[key]
    return (not (math.isfinite(loss) and math.isfinite(value)), value, loss if math.isfinite(loss) else 0.0)


def pick_lr(cfg, rt, b: Base, results, method, t0) -> float:
    """The grid's learning rate whose seed-0 run on all the data ranks best on val (val_rank: by default
    the val loss, or for a classification task the val label loss; --pick_on chooses). Those runs are the
    grid's own seed-0 cells, so picking costs only the rates that lose. With lr_bracket, a best rate at
    either end of the grid is not trusted: the optimum may lie beyond it, so the next rate out is tried,
    and the next, until one ranks worse (at most MAX_EXTRA_RATES more; a diverged run ranks last)."""
    grid = LR_GRID[method] if cfg.lr_grid else LR_GRID[method][1:2]
    rank = lambda lr: val_rank(cell(cfg, rt, b, results, method, lr, 0, 0, cfg.n_prefix, t0), cfg.pick_on)  # noqa: E731
    ranks = {lr: rank(lr) for lr in grid}
    best = lambda: min(ranks, key=ranks.get)   # noqa: E731
    for _ in range(MAX_EXTRA_RATES if cfg.lr_grid and cfg.lr_bracket else 0):
        lr = best()
        if lr not in (min(ranks), max(ranks)):
            break                                  # bracketed: worse rates on both sides
        nxt = next_rate(lr, up=(lr == max(ranks)))
        ranks[nxt] = rank(nxt)
        if best() == lr:
            break                                  # the step out was worse: lr is the edge's optimum
    return best()


def grid(cfg, rt, b: Base, results, t0, sizes, p_sweep):
    """Every method on b: its learning rate picked, then every seed and size (and, for prefix, every length
    of p_sweep on all the data). Returns (the rows at n_prefix, the prefix-length sweep's rows)."""
    rows, sweep = [], []
    trained = [m for m in cfg.methods if m != "fewshot"]
    spread(cfg, rt, b, results, [(m, lr, 0, 0, cfg.n_prefix) for m in trained
                                 for lr in (LR_GRID[m] if cfg.lr_grid else LR_GRID[m][1:2])], t0)
    rates = {m: 0.0 if m == "fewshot" else pick_lr(cfg, rt, b, results, m, t0) for m in cfg.methods}
    spread(cfg, rt, b, results, [(m, rates[m], *run) for m in cfg.methods for run in runs_of(cfg, m, sizes, p_sweep)], t0)
    for method in cfg.methods:
        lr = rates[method]
        for seed, size, p in runs_of(cfg, method, sizes, p_sweep):
            r = cell(cfg, rt, b, results, method, lr, seed, size, p, t0)
            if method == "prefix" and size == 0:
                sweep.append(r)                       # the prefix-length curve
            if not (method == "prefix" and p != cfg.n_prefix):
                rows.append(r)                        # the table and the low-data curves
    return rows, sweep


def runs_of(cfg, method: str, sizes, p_sweep) -> list[tuple[int, int, int]]:
    """A method's (seed, size, n_prefix) cells at its picked rate; the prefix also sweeps its length."""
    if method == "fewshot":
        return [(0, 0, 0)]    # nothing is trained: no seed or size changes it
    runs = [(seed, size, cfg.n_prefix) for seed in cfg.seeds for size in sizes]
    if method == "prefix":
        runs += [(seed, 0, p) for seed in cfg.seeds for p in p_sweep if p != cfg.n_prefix]
    return runs


def gaps_per_seed(rows, method: str, base_loss: float) -> list[float]:
    """Per seed, the share (%) of the val-loss gap between the base alone and full fine-tuning that method
    closes: (base - method) / (base - ft). A seed whose ft did not beat the base has no gap to close."""
    ft = {r["seed"]: r["val_loss"] for r in rows if r["method"] == "ft"}
    shares = [metrics.gap_closed(base_loss, r["val_loss"], ft[r["seed"]]) for r in rows
              if r["method"] == method and r["seed"] in ft]
    return [g for g in shares if g is not None]


def table(rows, base_val, base_corpus, base_scores, columns: dict) -> str:
    """Markdown: one line a method, on all the training data, mean ± std over seeds; the test columns
    are the task's (columns: row key -> heading)."""
    lines = [f"| method | trainable parameters | val loss | {' | '.join(columns.values())} | "
             "forgetting: corpus val loss | seconds a run |", "|---|---|---|" + "---|" * len(columns) + "---|---|",
             f"| base alone | 0 | {base_val:.3f} | "
             + "".join(f"{'n/a' if base_scores.get(k) is None else f'{base_scores[k]:.3f}'} | " for k in columns)
             + f"{base_corpus:.3f} | |"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        params = mine[0]["trainable"]
        scores = "".join(f"{mean_std([r.get(k) for r in mine])} | " for k in columns)   # a row cached before a column: n/a
        lines.append(f"| {method}{' (k=%d)' % mine[0]['shots'] if method == 'fewshot' else ''} | {params:,} "
                     f"({mine[0]['percent']:.2f}%) | {mean_std([r['val_loss'] for r in mine])} | {scores}"
                     f"{mean_std([r['forgetting'] for r in mine])} | {statistics.mean(r['seconds'] for r in mine):.1f} |")
    return "\n".join(lines)


def sizes_table(rows, sizes, key: str, heading: str) -> str:
    """Markdown: `key` (mean ± std over seeds) for every method and training-set size: the low-data curves
    of results.png, as numbers."""
    sizes = sorted(sizes, key=lambda n: n or float("inf"))           # 0 = all the data, last
    lines = [f"| {heading} | " + " | ".join(f"{n or 'all'} examples" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "fewshot"):
        lines.append(f"| {method} | " + " | ".join(
            mean_std([r[key] for r in rows if r["method"] == method and r["size"] == n]) for n in sizes) + " |")
    return "\n".join(lines)


def sweep_table(sweep) -> str:
    """Markdown: the prefix's val loss for each prefix length P (all the data, mean ± std over seeds)."""
    ps = sorted({r["n_prefix"] for r in sweep})
    return ("| prefix length P | " + " | ".join(map(str, ps)) + " |\n|---|" + "---|" * len(ps) + "\n| val loss | "
            + " | ".join(mean_std([r["val_loss"] for r in sweep if r["n_prefix"] == p]) for p in ps) + " |")


def budget_table(budget, methods, score: tuple[str, str]) -> str:
    """Markdown for the base-budget axis (all the data, mean ± std over seeds): a line a base (what it is),
    then three tables with a line a method and a column a base: val loss, the task's first test score
    (score: its row key and heading, e.g. BLEU-4), and the share of the base→FT val-loss gap it closes."""
    lines = ["| base | pretraining iterations | corpus val loss | base alone: val loss |", "|---|---|---|---|"]
    iters = [e["iters"] for e in budget]
    lines += [f"| {e['path']} | {'n/a' if i is None else format(i, ',')} | {e['corpus']:.3f} | {e['val']:.3f} |"
              for e, i in zip(budget, iters)]
    named = None not in iters and len(set(iters)) == len(iters)   # a column heading that tells the bases apart
    heads = [f"{i:,} iterations" for i in iters] if named else [e["path"] for e in budget]

    def by_base(title, rows_of, cell) -> str:
        out = [f"| {title} | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
        out += [f"| {m} | " + " | ".join(cell(e, m) for e in budget) + " |" for m in rows_of]
        return "\n".join(out)

    def column(key):   # one method's mean ± std of a row key on one base
        return lambda e, m: mean_std([r.get(key) for r in e["rows"] if r["method"] == m])
    tables = [by_base("val loss", methods, column("val_loss")), by_base(score[1], methods, column(score[0]))]
    if "ft" in methods:
        tables.append(by_base("% of the base→FT gap closed", [m for m in methods if m != "ft"],
                              lambda e, m: mean_std(gaps_per_seed(e["rows"], m, e["val"]), digits=1)))
    return "\n\n".join(["\n".join(lines)] + tables)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_bases(budget, methods, out_dir):
    """results_bases.png: the share of the base→FT gap each method closes, against the base's pretraining
    iterations (or its place in --bases, for a base whose checkpoint does not say)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    known = all(e["iters"] for e in budget)
    xs = [e["iters"] if known else i + 1 for i, e in enumerate(budget)]
    order = sorted(range(len(budget)), key=lambda i: xs[i])
    for method in [m for m in methods if m not in ("ft", "fewshot")]:
        ys = [statistics.mean(g) if (g := gaps_per_seed(budget[i]["rows"], method, budget[i]["val"])) else math.nan
              for i in order]
        ax.plot([xs[i] for i in order], ys, "o-", label=method)
    ax.axhline(100, color="gray", ls="--", lw=0.8, label="ft")   # ft closes all of its own gap
    ax.set(xscale="log" if known else "linear", ylabel="% of the base→FT val-loss gap closed",
           xlabel="base's pretraining iterations" if known else "base (its place in --bases)", title="base budget")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_xticks([], minor=True)   # a log axis labels its minor ticks too, over the bases' own labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(os.path.join(out_dir, "results_bases.png"), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plots(rows, sweep, out_dir, base_val):
    plt = pyplot()
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
        axes[1].plot([s or max((x for x in mine if x), default=1) * 2 for s in mine], ys, "o-", label=method)
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
    seen = parse(argv, cfg, prog="experiments/compare.py", description=__doc__.split("\n\n")[0])
    if cfg.quick:   # a smaller grid, except where a setting was given explicitly
        small = dict(seeds=cfg.seeds[:2], sizes=[50, 0], p_sweep=[1, 10], steps=40, lr_grid=False,
                     val_examples=64, test_prompts=5, test_examples=100)
        cfg = replace(cfg, **{k: v for k, v in small.items() if k not in seen})
    task_dir = cfg.task_dir or os.path.join("data", cfg.task)
    labels = task_labels(cfg.task, task_dir)
    if cfg.pick_on in ("label_loss", "accuracy") and not labels:
        raise ValueError(f"--pick_on={cfg.pick_on} scores a choice among labels: --task={cfg.task} has none "
                         "(use --pick_on=loss or auto)")
    global WORKERS
    WORKERS, device = worker_slot(cfg.device)
    quiet_unless_master(WORKERS)
    rt = setup_runtime(device, "float32", 0)
    b = load_base(cfg, rt, cfg.base, task_dir, labels)
    prints = check_bases(cfg.bases, b.tokenizer.name)
    base_scores = test_scores(cfg, b, b.model, None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results = CellLog(os.path.join(cfg.out_dir, "results.jsonl"))
    t0 = time.time()
    print(f"base alone: val loss {b.data['val_base']:.4f} | corpus val loss {b.data['corpus_base']:.4f} | "
          f"{len(b.data['train'])} train, {len(b.data['val'])} val examples | {cfg.steps} steps, batch {cfg.batch_size}")
    rows, sweep = grid(cfg, rt, b, results, t0, cfg.sizes, cfg.p_sweep)
    md = table([r for r in rows if r["size"] == 0], b.data["val_base"], b.data["corpus_base"], base_scores,
               SCORES[cfg.task])
    if cfg.task == "e2e":   # the paper's table, for scale: another model, another test set
        md += ("\n\nLi & Liang (GPT-2 medium, E2E's official test; their numbers, not these): "
               + li_liang_numbers("prefix", "fine-tuning") + ". METEOR here is a variant without synonyms "
               "(prefixgpt/nlg_metrics.py).")
    everything = [r for r in rows if r["size"] == 0]
    if any(r["method"] == "ft" for r in everything):
        shares = {m: gaps_per_seed(everything, m, b.data["val_base"]) for m in dict.fromkeys(r["method"] for r in everything)
                  if m not in ("ft", "fewshot")}
        md += ("\n\nShare of the val-loss gap between the base alone and ft that each method closes, per seed, "
               "(base - method) / (base - ft), all the data\n\n| method | % of the gap closed |\n|---|---|\n"
               + "\n".join(f"| {m} | {mean_std(v, 1)} |" for m, v in shares.items()))
    if len(cfg.sizes) > 1:
        first = next(iter(SCORES[cfg.task].items()))          # the task's first test score (BLEU-4, accuracy)
        md += ("\n\nBy training-set size (mean ± std over seeds): val loss, then " + first[1] + "\n\n"
               + sizes_table(rows, cfg.sizes, "val_loss", "val loss") + "\n\n"
               + sizes_table(rows, cfg.sizes, first[0], first[1]))
    if len({r["n_prefix"] for r in sweep}) > 1:
        md += "\n\nPrefix length (prefix, all the data)\n\n" + sweep_table(sweep)
    if WORKERS.master:
        plots(rows, sweep, cfg.out_dir, b.data["val_base"])
    budget = []
    for path, fingerprint in prints.items():   # the base-budget axis: one base at a time, all the data
        other = b if fingerprint == b.fingerprint else load_base(cfg, rt, path, task_dir, labels)
        print(f"\nbase {path} ({other.iters} pretraining iterations): val loss {other.data['val_base']:.4f} | "
              f"corpus val loss {other.data['corpus_base']:.4f}")
        budget.append({"path": path, "iters": other.iters, "corpus": other.data["corpus_base"],
                       "val": other.data["val_base"], "rows": grid(cfg, rt, other, results, t0, [0], [])[0]})
    if budget:
        md += ("\n\nBase budget: each base on all the data (mean ± std over seeds)\n\n"
               + budget_table(budget, cfg.methods, next(iter(SCORES[cfg.task].items()))))
        if "ft" in cfg.methods and WORKERS.master:
            plot_bases(budget, cfg.methods, cfg.out_dir)
        else:
            print("note: no results_bases.png: the share of the base→FT gap needs ft among --methods")
    if not WORKERS.master:
        return                # process 0 writes the table and the plots
    write_atomic(os.path.join(cfg.out_dir, "results.md"), md + "\n")
    n_runs = len({r["cell"] for r in rows + sweep + [r for e in budget for r in e["rows"]]})   # each cell once
    print(f"\n{md}\n\n{n_runs} runs; this invocation took {fmt_time(time.time() - t0)}; "
          f"wrote {cfg.out_dir}/results.md, results.png{', results_bases.png' * bool(budget)}, results.jsonl")


if __name__ == "__main__":
    main_guard(main)
