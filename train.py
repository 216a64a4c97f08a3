"""
train.py — pretrain a GPT from scratch on a prepared corpus (train.bin / val.bin).

    python data/shakespeare/prepare.py --input input.txt          # writes data/shakespeare/*.bin
    python train.py config/train_shakespeare_baby.toml            # CPU, ~1.5 minutes
    python train.py config/train_shakespeare_baby.toml --resume   # continue out_dir/last.pt
    torchrun --standalone --nproc_per_node=2 train.py config/...  # data parallel (NCCL / Gloo)
    python train.py --help                                        # every setting and its default

Writes to out_dir: last.pt and best.pt (atomic), config.json, metrics.jsonl, loss.png.
"""
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, safe_torch_load
from cli import main_guard, parse, save_json
from data.bins import load_bin
from model import GPT, GPTConfig, make_adamw


@dataclass
class TrainConfig:
    data_dir: str = "data/shakespeare"
    out_dir: str = "out/shakespeare"
    resume: bool = False          # continue from out_dir/last.pt
    overwrite: bool = False       # allow a fresh run to replace checkpoints already in out_dir
    batch_size: int = 12          # sequences per micro-step
    grad_accum: int = 1           # micro-steps per optimiser step (the loss is divided by it)
    max_iters: int = 2000         # optimiser steps
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000    # cosine decay from learning_rate to min_lr ends here
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0        # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20          # batches per split in each evaluation
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"          # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"           # auto (bfloat16 autocast on CUDA, float32 elsewhere) | float32 | bfloat16
    compile: bool = False         # torch.compile (worth it on GPUs; off by default because CPU gains little)
    plot: bool = True             # redraw out_dir/loss.png at every evaluation


def cosine_lr(it: int, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup from max_lr/(warmup+1) (never 0 at step 0), then cosine down to min_lr."""
    if it < warmup_iters:
        return max_lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator, device):
    """Random windows of block_size+1 tokens: x is the window, y the same shifted by one. (B, T) each."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
    windows = starts[:, None] + torch.arange(block_size + 1)                       # (B, T+1)
    chunk = torch.from_numpy(data[windows.numpy()].astype(np.int64))
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def pick_device(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_context(device: str, dtype: str):
    if device.startswith("cuda") and dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bfloat16" and device == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(model, splits: dict, cfg: TrainConfig, block_size: int, device, ctx) -> dict:
    """Mean loss over eval_iters batches per split. The batches are the same at every evaluation
    (a generator seeded afresh), so changes in the curve come from the model, not from sampling."""
    model.eval()
    out = {}
    for name, data in splits.items():
        gen = torch.Generator().manual_seed(cfg.seed + 999)
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.batch_size, block_size, gen, device)
            with ctx:
                _, loss = model(x, y)
            losses.append(loss.item())
        out[name] = float(np.mean(losses))
    model.train()
    return out


@torch.no_grad()
def full_split_loss(model, data: np.ndarray, block_size: int, batch_size: int, device, ctx,
                    max_tokens: int = 2_000_000) -> float:
    """Loss over every non-overlapping block_size window of a split (up to max_tokens): the number to
    compare runs by. The eval_iters estimate above is cheaper but swings by ±0.02 on Tiny Shakespeare."""
    model.eval()
    n = min(len(data) - 1, max_tokens) // block_size
    ids = torch.from_numpy(data[: n * block_size + 1].astype(np.int64))
    x, y = ids[:-1].view(n, block_size), ids[1:].view(n, block_size)
    total = 0.0
    for i in range(0, n, batch_size):
        with ctx:
            _, loss = model(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        total += loss.item() * len(x[i:i + batch_size])
    model.train()
    return total / n


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and a loss-curve PNG, both in out_dir."""

    def __init__(self, out_dir: str, append: bool):
        import json
        self.json = json
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.png = os.path.join(out_dir, "loss.png")
        self.rows = []
        if append and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
        else:
            open(self.path, "w", encoding="utf-8").close()

    def write(self, **row):
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(self.json.dumps(row) + "\n")

    def plot(self, title: str):
        plot_losses(self.rows, self.png, title)


def plot_losses(rows, png_path, title):
    """Train loss per logged step (thin) and the evaluated train/val losses (markers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.5, label="train (batch)")
    evals_train = [r for r in evals if math.isfinite(r.get("train_loss", float("nan")))]
    if evals_train:
        ax.plot([r["iter"] for r in evals_train], [r["train_loss"] for r in evals_train], "o-", label="train (eval)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}m{s:02d}s"


def resolve_configs(argv):
    """TrainConfig and GPTConfig from defaults, config files and flags; on --resume, the checkpoint's
    settings with the command line's explicit changes on top (model shape cannot change)."""
    cfg, model_cfg = TrainConfig(), GPTConfig(vocab_size=0)
    seen = parse(argv, cfg, model_cfg, prog="train.py", description=__doc__.split("\n\n")[0])
    ckpt = None
    if cfg.resume:
        ckpt = safe_torch_load(os.path.join(cfg.out_dir, "last.pt"), "checkpoint to resume")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{cfg.out_dir}/last.pt is not a prefixgpt checkpoint")
        saved_model = GPTConfig(**ckpt["model_config"])
        for name in seen & set(asdict(model_cfg)):
            if name != "dropout" and getattr(model_cfg, name) != getattr(saved_model, name):
                raise ValueError(f"cannot change {name} when resuming (checkpoint has "
                                 f"{getattr(saved_model, name)}): start a new run in another --out_dir")
        saved_model.dropout = model_cfg.dropout if "dropout" in seen else saved_model.dropout
        resumed = TrainConfig(**ckpt["train_config"])
        for name in seen & set(asdict(cfg)):
            setattr(resumed, name, getattr(cfg, name))
        cfg, model_cfg = resumed, saved_model
    return cfg, model_cfg, seen, ckpt


def main(argv):
    cfg, model_cfg, seen, ckpt = resolve_configs(argv)

    # -- processes and devices -------------------------------------------------------------------
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    device = pick_device(cfg.device)
    if ddp:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed + rank)
    if device == "cpu":
        # Tiny values late in training become denormal floats, which CPUs handle ~100x slower.
        torch.set_flush_denormal(True)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = autocast_context(device, cfg.dtype)

    # -- data ------------------------------------------------------------------------------------
    train_data, val_data, meta = load_bin(cfg.data_dir)
    if ckpt is None:
        if model_cfg.vocab_size == 0:
            model_cfg.vocab_size = meta["vocab_size"]
        elif model_cfg.vocab_size < meta["vocab_size"]:
            raise ValueError(f"--vocab_size={model_cfg.vocab_size} is smaller than the data's vocabulary "
                             f"({meta['vocab_size']}, tokenizer {meta['tokenizer']})")
    elif ckpt.get("tokenizer") != meta["tokenizer"]:
        raise ValueError(f"the checkpoint was trained with the {ckpt.get('tokenizer')!r} tokenizer but "
                         f"{cfg.data_dir} holds {meta['tokenizer']!r} tokens")
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= model_cfg.block_size + 1:
            raise ValueError(f"{cfg.data_dir}/{name}.bin has {len(data)} tokens, fewer than block_size+1 "
                             f"({model_cfg.block_size + 1}): use more text or a smaller --block_size")

    # -- output folder: never clobber an earlier run by accident ---------------------------------
    last_path = os.path.join(cfg.out_dir, "last.pt")
    best_path = os.path.join(cfg.out_dir, "best.pt")
    if master:
        if not cfg.resume and not cfg.overwrite and (os.path.exists(last_path) or os.path.exists(best_path)):
            raise ValueError(f"{cfg.out_dir} already holds checkpoints: pass --resume to continue that run, "
                             "--out_dir=... to start elsewhere, or --overwrite to replace them")
        os.makedirs(cfg.out_dir, exist_ok=True)
        save_json(os.path.join(cfg.out_dir, "config.json"),
                  {"train": asdict(cfg), "model": asdict(model_cfg), "tokenizer": meta["tokenizer"],
                   "data": meta, "world_size": world})

    # -- model and optimiser ---------------------------------------------------------------------
    model = GPT(model_cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    optimizer = make_adamw(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                           device_type=device.split(":")[0])
    iter_num, best_val = 0, float("inf")
    batch_gen = torch.Generator().manual_seed(cfg.seed + rank)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val = ckpt["iter_num"], ckpt["best_val_loss"]
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"])
        if rank == 0:
            batch_gen.set_state(rng["batches"])
        else:  # only rank 0's stream is saved; the others restart theirs deterministically
            batch_gen.manual_seed(cfg.seed + rank + 1_000_003 * iter_num)
        say(f"resuming {last_path} at iteration {iter_num} (best val loss {best_val:.4f})")
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    n_params = raw_model.num_params()
    tokens_per_iter = cfg.batch_size * model_cfg.block_size * cfg.grad_accum * world
    say(f"model: {n_params / 1e6:.2f}M parameters (non-embedding) | {model_cfg.n_layer} layers, "
        f"{model_cfg.n_head} heads, {model_cfg.n_embd} wide, block {model_cfg.block_size}, vocab "
        f"{model_cfg.vocab_size} ({meta['tokenizer']}) | device {device} x{world} | "
        f"{tokens_per_iter:,} tokens/iter")

    def save(path, val_loss):
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_config": asdict(model_cfg),
            "train_config": asdict(cfg),
            "tokenizer": meta["tokenizer"],
            "iter_num": iter_num,
            "best_val_loss": best_val,
            "val_loss": val_loss,
            "rng": {"torch": torch.get_rng_state(), "batches": pending_state,
                    "cuda": torch.cuda.get_rng_state() if device.startswith("cuda") else None},
        }, path)

    log = MetricsLog(cfg.out_dir, append=cfg.resume) if master else None
    title = f"{os.path.basename(os.path.normpath(cfg.out_dir))}: {model_cfg.n_layer}L {model_cfg.n_embd}d"

    # Ctrl-C / SIGTERM: finish the current step, save last.pt, exit.
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def should_stop() -> bool:
        """True when any process got a signal. Under DDP the ranks must agree: one rank leaving the
        loop while another waits in the next gradient all-reduce would hang both. They agree at log
        steps only, as reading the flag waits for the GPU and would stall every step."""
        if not ddp:
            return stop["signal"] is not None
        if iter_num % cfg.log_interval != 0:
            return False
        flag = torch.tensor([0.0 if stop["signal"] is None else float(stop["signal"])], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and stop["signal"] is None:
            stop["signal"] = int(flag.item())
        return flag.item() > 0

    def evaluate():
        nonlocal best_val
        losses = estimate_loss(raw_model, {"train": train_data, "val": val_data}, cfg,
                               model_cfg.block_size, device, ctx)
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"evaluation loss is {losses} at iteration {iter_num}")
        say(f"eval @ {iter_num}: train {losses['train']:.4f} | val {losses['val']:.4f}")
        log.write(iter=iter_num, train_loss=losses["train"], val_loss=losses["val"])
        if losses["val"] < best_val:
            best_val = losses["val"]
            save(best_path, losses["val"])
        save(last_path, losses["val"])
        if cfg.plot:
            log.plot(title)
        return losses

    # -- the loop ------------------------------------------------------------------------------------
    model.train()
    t_start = time.time()
    t_eval = 0.0
    start_iter = iter_num
    last_eval = None
    pending_state = batch_gen.get_state()
    x, y = get_batch(train_data, cfg.batch_size, model_cfg.block_size, batch_gen, device)
    t_last = time.time()
    try:
        if master and iter_num == 0 and cfg.eval_interval > 0:
            t0 = time.time()
            last_eval = evaluate()
            t_eval += time.time() - t0
            t_last = time.time()
        while iter_num < cfg.max_iters:
            lr = cosine_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(cfg.grad_accum):
                sync = (not ddp) or micro == cfg.grad_accum - 1
                with (contextlib.nullcontext() if sync else model.no_sync()), ctx:
                    _, loss = model(x, y)
                    loss = loss / cfg.grad_accum
                # fetch the next batch while the backward pass is queued (overlaps on GPUs); a
                # checkpoint stores the sampler state from *before* this fetch, so resuming refetches it
                pending_state = batch_gen.get_state()
                x, y = get_batch(train_data, cfg.batch_size, model_cfg.block_size, batch_gen, device)
                loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1

            if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
                loss_value = loss.item() * cfg.grad_accum
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss is {loss_value} at iteration {iter_num}")
                now = time.time()
                steps = cfg.log_interval if iter_num % cfg.log_interval == 0 else iter_num % cfg.log_interval
                ms = (now - t_last) * 1000 / steps
                t_last = now
                tok_s = tokens_per_iter / (ms / 1000)
                eta = (cfg.max_iters - iter_num) * ms / 1000
                say(f"iter {iter_num}/{cfg.max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | "
                    f"{ms:.1f} ms/iter | {tok_s / 1000:.1f}k tok/s | ETA {fmt_time(eta)}")
                if master:
                    log.write(iter=iter_num, loss=loss_value, lr=lr, ms_per_iter=ms, tokens_per_s=tok_s)
            if master and cfg.eval_interval > 0 and (iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters):
                t0 = time.time()
                last_eval = evaluate()
                t_eval += time.time() - t0
                t_last = time.time()
            if should_stop():
                break
    except FloatingPointError as e:
        raise ValueError(f"{e}: training diverged; the last good checkpoint is kept in {cfg.out_dir} "
                         "(try a lower --learning_rate or --grad_clip)") from None

    elapsed = time.time() - t_start
    if stop["signal"] is not None:
        if master:
            save(last_path, float("nan") if last_eval is None else last_eval["val"])
        say(f"stopped by signal {stop['signal']} at iteration {iter_num}; saved {last_path}. "
            "Continue with the same command plus --resume.")
        leave(130, ddp)
    if master:
        if last_eval is None or cfg.eval_interval <= 0:
            save(last_path, float("nan"))
        done = iter_num - start_iter
        full_val = full_split_loss(raw_model, val_data, model_cfg.block_size, 64, device, ctx)
        summary = {"iters": done, "seconds": elapsed, "train_seconds": elapsed - t_eval,
                   "ms_per_iter": 1000 * (elapsed - t_eval) / max(done, 1),
                   "final_val_loss": None if last_eval is None else last_eval["val"],
                   "best_val_loss": best_val if math.isfinite(best_val) else None,
                   "final_val_loss_full_split": full_val}
        log.write(summary=summary)
        save_json(os.path.join(cfg.out_dir, "summary.json"), summary)
        val = "n/a" if last_eval is None else f"{last_eval['val']:.4f}"
        best = f"{best_val:.4f}" if math.isfinite(best_val) else "n/a"
        say(f"done: {done} iterations in {elapsed:.1f} s ({elapsed - t_eval:.1f} s training, "
            f"{summary['ms_per_iter']:.1f} ms/iter) | val loss final {val}, best {best} "
            f"(estimates) | whole val split {full_val:.4f} | {cfg.out_dir}")
    leave(0, ddp)


def leave(status: int, ddp: bool):
    """End the run. Under DDP: wait until every rank is done (rank 0 writes the last checkpoint and
    summary), flush, and exit at once. Running torch's destructors instead can deadlock: Gloo's process
    group joins its worker thread while holding the GIL, and that thread may still need the GIL to free
    its last finished work item (seen here with 2 CPU processes under load). All files are closed by now."""
    if ddp:
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main_guard(main)
