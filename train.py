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
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from data.bins import load_bin
from model import GPT, GPTConfig
from prefixgpt.checkpoint import load_checkpoint, save_checkpoint
from prefixgpt.cli import main_guard, parse, setting, validate
from prefixgpt.distributed import agree_to_stop, leave, setup_processes
from prefixgpt.optim import cosine_lr, make_adamw, set_lr
from prefixgpt.runlog import MetricsLog, claim_run_dir, finite_or_none, fmt_time, write_json, write_run_config
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, StopOnSignal, setup_runtime
from prefixgpt.scoring import eval_mode, full_split_loss


@dataclass
class TrainConfig:
    data_dir: str = "data/shakespeare"
    out_dir: str = "out/shakespeare"
    resume: bool = False          # continue from out_dir/last.pt
    overwrite: bool = False       # allow a fresh run to replace an earlier pretraining run in out_dir
    batch_size: int = setting(12, min=1)      # sequences per micro-step
    grad_accum: int = setting(1, min=1)       # micro-steps per optimiser step (the loss is divided by it)
    max_iters: int = setting(2000, min=1)     # optimiser steps
    learning_rate: float = setting(1e-3, gt=0.0)
    min_lr: float = setting(1e-4, min=0.0)
    warmup_iters: int = setting(100, min=0)
    lr_decay_iters: int = setting(2000, min=1)  # cosine decay from learning_rate to min_lr ends here
    weight_decay: float = setting(0.1, min=0.0)
    beta1: float = setting(0.9, min=0.0, max=0.9999)
    beta2: float = setting(0.99, min=0.0, max=0.9999)
    grad_clip: float = setting(1.0, min=0.0)  # 0 disables clipping
    eval_interval: int = setting(250, min=0)  # 0: no evaluation during training (the final pass still runs)
    eval_iters: int = setting(20, min=1)      # batches per split in each evaluation
    log_interval: int = setting(10, min=1)
    seed: int = 1337
    device: str = setting("auto", pattern=DEVICE_PATTERN)   # auto | cpu | cuda | cuda:N | mps
    dtype: str = setting("auto", choices=DTYPES)  # auto: bfloat16 autocast on CUDA cards that have it, else fp32
    compile: bool = False         # torch.compile (worth it on GPUs; off by default because CPU gains little)
    grad_checkpoint: bool = False  # recompute each block in the backward: less memory, about a third more time
    plot: bool = True             # redraw out_dir/loss.png at every evaluation


def get_batch(data: np.ndarray, batch_size: int, block_size: int, gen: torch.Generator, device):
    """Random windows of block_size+1 tokens: x is the window, y the same shifted by one. (B, T) each."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=gen)
    windows = starts[:, None] + torch.arange(block_size + 1)                       # (B, T+1)
    chunk = torch.from_numpy(data[windows.numpy()].astype(np.int64))
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits: dict, cfg: TrainConfig, block_size: int, device, ctx) -> dict:
    """Mean loss over eval_iters batches per split. The batches are the same at every evaluation
    (a generator seeded afresh), so changes in the curve come from the model, not from sampling."""
    out = {}
    with eval_mode(model):
        for name, data in splits.items():
            gen = torch.Generator().manual_seed(cfg.seed + 999)
            losses = []
            for _ in range(cfg.eval_iters):
                x, y = get_batch(data, cfg.batch_size, block_size, gen, device)
                with ctx:
                    _, loss = model(x, y)
                losses.append(loss.item())
            out[name] = float(np.mean(losses))
    return out


def resolve_configs(argv):
    """TrainConfig and GPTConfig from defaults, config files and flags; on --resume, the checkpoint's
    settings with the command line's explicit changes on top (model shape cannot change)."""
    cfg, model_cfg = TrainConfig(), GPTConfig(vocab_size=0)
    seen = parse(argv, cfg, model_cfg, prog="train.py", description=__doc__.split("\n\n")[0])
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(os.path.join(cfg.out_dir, "last.pt"), need_resume=True)
        saved_model = GPTConfig(**ckpt["model_config"])
        for name in seen & set(asdict(model_cfg)):
            if name != "dropout" and getattr(model_cfg, name) != getattr(saved_model, name):
                raise ValueError(f"cannot change {name} when resuming (checkpoint has "
                                 f"{getattr(saved_model, name)}): start a new run in another --out_dir")
        saved_model.dropout = model_cfg.dropout if "dropout" in seen else saved_model.dropout
        unknown = set(ckpt["train_config"]) - set(asdict(cfg))
        if unknown:
            raise ValueError(f"{cfg.out_dir}/last.pt has settings this version does not know: {sorted(unknown)}")
        resumed = TrainConfig(**ckpt["train_config"])
        for name in seen & set(asdict(cfg)):
            setattr(resumed, name, getattr(cfg, name))
        cfg, model_cfg = resumed, saved_model
        validate(cfg, model_cfg)
    return cfg, model_cfg, seen, ckpt


def check_data(cfg, model_cfg, ckpt, train_data, val_data, meta):
    """The corpus must fit the model: its tokenizer, vocabulary and length."""
    if ckpt is None:
        if model_cfg.vocab_size == 0:
            model_cfg.vocab_size = meta["vocab_size"]
        elif model_cfg.vocab_size < meta["vocab_size"]:
            raise ValueError(f"--vocab_size={model_cfg.vocab_size} is smaller than the data's vocabulary "
                             f"({meta['vocab_size']}, tokenizer {meta['tokenizer']})")
    elif ckpt["tokenizer"] != meta["tokenizer"]:
        raise ValueError(f"the checkpoint was trained with the {ckpt['tokenizer']!r} tokenizer but "
                         f"{cfg.data_dir} holds {meta['tokenizer']!r} tokens")
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= model_cfg.block_size + 1:
            raise ValueError(f"{cfg.data_dir}/{name}.bin has {len(data)} tokens, fewer than block_size+1 "
                             f"({model_cfg.block_size + 1}): use more text or a smaller --block_size")


def restore_state(ckpt, optimizer, batch_gen, cfg, rank, device) -> tuple[int, float]:
    """Continue a run from its checkpoint: optimiser, RNG streams, iteration. Rank 0 gets its saved streams
    back; the other ranks reseed theirs from (seed, rank, iteration), so after a resume every rank still
    draws its own dropout masks and batches, as before it."""
    optimizer.load_state_dict(ckpt["optimizer"])
    iter_num, rng = ckpt["iter_num"], ckpt["rng"]
    if rank == 0:
        torch.set_rng_state(rng["torch"])
        batch_gen.set_state(rng["batches"])
        if rng.get("cuda") is not None and device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        torch.manual_seed(cfg.seed + rank + 1_000_003 * iter_num)
        batch_gen.manual_seed(cfg.seed + rank + 1_000_003 * iter_num)
    return iter_num, ckpt["best_val_loss"]


def main(argv):
    cfg, model_cfg, seen, ckpt = resolve_configs(argv)
    par = setup_processes(cfg.device)
    ddp, rank, world, device = par.enabled, par.rank, par.world, par.device
    rt = setup_runtime(device, cfg.dtype, seed=cfg.seed + rank)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    train_data, val_data, meta = load_bin(cfg.data_dir)
    check_data(cfg, model_cfg, ckpt, train_data, val_data, meta)
    if master:   # never clobber other work: a fresh run needs an empty folder or --overwrite
        claim_run_dir(cfg.out_dir, "pretrain", cfg.overwrite, cfg.resume)
        write_run_config(cfg.out_dir, "pretrain", {"train": asdict(cfg), "model": asdict(model_cfg),
                                                   "tokenizer": meta["tokenizer"], "data": meta, "world_size": world})
    model = GPT(model_cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(rt.device)
    model.grad_checkpoint = cfg.grad_checkpoint
    optimizer = make_adamw(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), rt.device_type)
    batch_gen = torch.Generator().manual_seed(cfg.seed + rank)
    iter_num, best_val = 0, float("inf")
    if ckpt is not None:
        iter_num, best_val = restore_state(ckpt, optimizer, batch_gen, cfg, rank, rt.device)
        say(f"resuming {cfg.out_dir}/last.pt at iteration {iter_num} (best val loss {best_val:.4f})")
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[torch.device(rt.device).index] if rt.device.startswith("cuda") else None)
    tokens_per_iter = cfg.batch_size * model_cfg.block_size * cfg.grad_accum * world
    say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters (non-embedding) | {model_cfg.n_layer} layers, "
        f"{model_cfg.n_head} heads, {model_cfg.n_embd} wide, block {model_cfg.block_size}, vocab "
        f"{model_cfg.vocab_size} ({meta['tokenizer']}) | device {rt.device} x{world}, {rt.dtype} | "
        f"{tokens_per_iter:,} tokens/iter")
    run = Run(cfg, model_cfg, rt, raw_model, optimizer, meta["tokenizer"], batch_gen, iter_num, best_val, master)
    with StopOnSignal() as stop:
        train_loop(run, model, train_data, val_data, stop, par, say, tokens_per_iter)
    if stop.signal is not None:
        if master:
            run.save("last.pt")
        say(f"stopped by signal {stop.signal} at iteration {run.iter_num}; saved {cfg.out_dir}/last.pt. "
            "Continue with the same command plus --resume.")
        leave(130, par)
    if master:
        finish(run, val_data, say)
    leave(0, par)


class Run:
    """What a checkpoint holds, kept together: model, optimiser, counters, RNG streams. save() writes it
    (refusing non-finite weights, so the last good checkpoint survives a divergence)."""

    def __init__(self, cfg, model_cfg, rt, model, optimizer, tokenizer, batch_gen, iter_num, best_val, master):
        self.cfg, self.model_cfg, self.rt, self.model, self.optimizer = cfg, model_cfg, rt, model, optimizer
        self.tokenizer, self.batch_gen, self.master = tokenizer, batch_gen, master
        self.iter_num, self.best_val, self.last_val = iter_num, best_val, None
        self.batch_state = batch_gen.get_state()   # the sampler state the next step's batch was drawn from
        self.log = MetricsLog(cfg.out_dir, append=cfg.resume) if master else None
        self.t_train = 0.0                          # seconds spent in training steps (no evals, no compile)
        self.start_iter, self.t_start = iter_num, time.time()

    def save(self, name: str, val_loss: float | None = None):
        save_checkpoint(os.path.join(self.cfg.out_dir, name), self.model, self.tokenizer,
                        optimizer=self.optimizer.state_dict(), train_config=asdict(self.cfg),
                        iter_num=self.iter_num, best_val_loss=self.best_val, val_loss=val_loss,
                        rng={"torch": torch.get_rng_state(), "batches": self.batch_state,
                             "cuda": torch.cuda.get_rng_state() if self.rt.device.startswith("cuda") else None})

    def evaluate(self, train_data, val_data, say):
        losses = estimate_loss(self.model, {"train": train_data, "val": val_data}, self.cfg,
                               self.model_cfg.block_size, self.rt.device, self.rt.autocast)
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"evaluation loss is {losses} at iteration {self.iter_num}")
        say(f"eval @ {self.iter_num}: train {losses['train']:.4f} | val {losses['val']:.4f}")
        self.log.write(iter=self.iter_num, train_loss=losses["train"], val_loss=losses["val"])
        self.last_val = losses["val"]
        if losses["val"] < self.best_val:
            self.best_val = losses["val"]
            self.save("best.pt", losses["val"])
        self.save("last.pt", losses["val"])
        if self.cfg.plot:
            self.log.plot(f"{os.path.basename(os.path.normpath(self.cfg.out_dir))}: "
                          f"{self.model_cfg.n_layer}L {self.model_cfg.n_embd}d")


def train_loop(run: Run, model, train_data, val_data, stop, par, say, tokens_per_iter):
    """nanoGPT's loop: evaluate (and save) at the top, then one optimiser step of grad_accum micro-steps,
    then log. The next batch is fetched while the backward pass is queued (they overlap on GPUs)."""
    cfg, rt, block = run.cfg, run.rt, run.model_cfg.block_size
    x, y = get_batch(train_data, cfg.batch_size, block, run.batch_gen, rt.device)
    t_last, window_s, steps_since_log = time.time(), 0.0, 0   # training time of the steps since the last log
    try:
        while True:
            at_eval = cfg.eval_interval and (run.iter_num % cfg.eval_interval == 0 or run.iter_num == cfg.max_iters)
            if run.master and at_eval and (run.iter_num > run.start_iter or run.iter_num == 0):
                window_s += time.time() - t_last
                run.evaluate(train_data, val_data, say)
                t_last = time.time()
            if run.iter_num >= cfg.max_iters:
                break
            set_lr(run.optimizer, lr := cosine_lr(run.iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters,
                                                  cfg.lr_decay_iters))
            for micro in range(cfg.grad_accum):
                sync = (not par.enabled) or micro == cfg.grad_accum - 1
                with (model.no_sync() if not sync else contextlib.nullcontext()), rt.autocast:
                    _, loss = model(x, y)
                    loss = loss / cfg.grad_accum
                # a checkpoint stores the sampler state from *before* this fetch, so resuming refetches it
                run.batch_state = run.batch_gen.get_state()
                x, y = get_batch(train_data, cfg.batch_size, block, run.batch_gen, rt.device)
                rt.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                rt.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            rt.scaler.step(run.optimizer)
            rt.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.iter_num += 1
            steps_since_log += 1
            if cfg.compile and run.iter_num == run.start_iter + 1:
                loss.item()   # wait for the first step: compiling happens in it, and is not a step's cost
                say(f"compiled in {window_s + time.time() - t_last:.1f} s (not counted in ms/iter or tokens/s)")
                t_last, window_s, steps_since_log = time.time(), 0.0, 0
            if run.iter_num % cfg.log_interval == 0 or run.iter_num == cfg.max_iters:
                loss_value = loss.item() * cfg.grad_accum
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss is {loss_value} at iteration {run.iter_num}")
                window_s += time.time() - t_last
                if steps_since_log:
                    ms = window_s * 1000 / steps_since_log
                    run.t_train += window_s
                    say(f"iter {run.iter_num}/{cfg.max_iters} | loss {loss_value:.4f} | lr {lr:.2e} | "
                        f"{ms:.1f} ms/iter | {tokens_per_iter / ms:.1f}k tok/s | "
                        f"ETA {fmt_time((cfg.max_iters - run.iter_num) * ms / 1000)}")
                    if run.master:
                        run.log.write(iter=run.iter_num, loss=loss_value, lr=lr, ms_per_iter=ms,
                                      tokens_per_s=tokens_per_iter / (ms / 1000))
                t_last, window_s, steps_since_log = time.time(), 0.0, 0
                if agree_to_stop(stop, par):
                    break
            elif not par.enabled and stop.signal is not None:
                break
    except FloatingPointError as e:
        raise ValueError(f"{e}: training diverged; the last good checkpoint is kept in {cfg.out_dir} "
                         "(try a lower --learning_rate or --grad_clip)") from None


def finish(run: Run, val_data, say):
    """After the last step: last.pt (unless the final evaluation just wrote it), the loss over the whole
    val split, summary.json. Ctrl-C here interrupts as usual: last.pt is already saved."""
    cfg = run.cfg
    if run.last_val is None or not cfg.eval_interval or run.iter_num % cfg.eval_interval:
        run.save("last.pt", run.last_val)
    full_val = full_split_loss(run.model, val_data, run.model_cfg.block_size, cfg.batch_size, run.rt.device,
                               run.rt.autocast)
    if not math.isfinite(full_val):
        raise ValueError(f"the loss over the whole val split is {full_val}: the model is broken; "
                         f"the last good checkpoint is kept in {cfg.out_dir}")
    done = run.iter_num - run.start_iter
    summary = {"iters": done, "seconds": time.time() - run.t_start, "train_seconds": run.t_train, "ms_per_iter": 1000 * run.t_train / max(done, 1),
               "final_val_loss": run.last_val, "best_val_loss": finite_or_none(run.best_val),
               "final_val_loss_full_split": full_val}
    run.log.write(summary=summary)
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    val = "n/a" if run.last_val is None else f"{run.last_val:.4f}"
    best = f"{run.best_val:.4f}" if math.isfinite(run.best_val) else "n/a"
    say(f"done: {done} iterations ({run.t_train:.1f} s training, {summary['ms_per_iter']:.1f} ms/iter) | val "
        f"loss final {val}, best {best} (estimates) | whole val split {full_val:.4f} | {cfg.out_dir}")


if __name__ == "__main__":
    main_guard(main)
