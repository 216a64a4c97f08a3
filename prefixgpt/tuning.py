"""
tuning.py — one tuning loop for every method of the family: prefix and prompt tuning, LoRA, adapters,
BitFit, FT-top2 and full fine-tuning. The caller decides what trains and what the loss is (finetune_prefix.py
shows both); the loop is shared here:

    train, val = load_examples(cfg, tokenizer, block_size, P)
    best = tune(cfg, rt, model, prefix, loss_fn, optimizer, train, val, base_loss, save_best)
    check_frozen_unchanged(originals, base_path)                          # every frozen tensor, bit for bit

`cfg` is a TuneConfig (finetune_prefix.FinetuneConfig extends it with files and devices; compare.py builds
one per cell). The loop: cosine schedule, gradient clipping, an evaluation every eval_interval steps, the
best state saved by the caller's save_best, early stopping, NaN checked at log steps, Ctrl-C stops after a
step. It knows nothing about file formats (save_best writes) or command lines.
"""
import math
import time
from dataclasses import dataclass

import torch

from data.tasks import batches, collate, load_task
from model import room_after
from prefix import PromptTuning, build_prefix, init_text_tokens
from prefixgpt.checkpoint import load_model
from prefixgpt.cli import setting
from prefixgpt.distributed import Parallel
from prefixgpt.methods import LORA_TARGETS, METHODS
from prefixgpt.optim import cosine_lr, set_lr
from prefixgpt.runlog import MetricsLog, fmt_time
from prefixgpt.runtime import StopOnSignal
from prefixgpt.scoring import task_loss_terms


@dataclass
class TuneConfig:
    """What a method trains and how: the settings make_prefix, attach's caller and tune read, with their one
    set of defaults and allowed values (prefixgpt/cli.py checks them where a command line is parsed)."""
    method: str = setting("prefix", choices=METHODS)   # prefix methods, or the family to compare with
    n_prefix: int = setting(10, min=1)          # P, the number of virtual tokens
    reparam_hidden: int = setting(512, min=1)   # MLP width for prefix-reparam
    lora_r: int = setting(4, min=1)             # LoRA: rank r of B·A
    lora_alpha: float = setting(8.0, gt=0.0)    # LoRA: the update is scaled by alpha / r
    lora_targets: list[str] = setting(["attn.c_attn"], choices=LORA_TARGETS)   # which Linear layers get LoRA
    adapter_size: int = setting(16, min=1)      # adapters: the bottleneck width
    init: str = setting("random", choices=("random", "text"))  # text: the frozen model's own K/V for init_text
    init_text: str = "name eatType food area near"
    batch_size: int = setting(16, min=1)
    max_iters: int = setting(400, min=0)         # 0: save the initial prefix only
    learning_rate: float = setting(1e-2, gt=0.0)
    min_lr: float = setting(1e-3, min=0.0)
    warmup_iters: int = setting(20, min=0)
    weight_decay: float = setting(0.0, min=0.0)
    grad_clip: float = setting(1.0, min=0.0)    # 0 disables clipping
    eval_interval: int = setting(50, min=1)
    patience: int = setting(4, min=1)           # stop after this many evaluations without a better val loss
    log_interval: int = setting(10, min=1)
    seed: int = 1337


def load_examples(cfg, tokenizer, block_size: int, n_prefix: int = 0):
    """Train and val examples, each cut to the room a prefix of n_prefix slots leaves in block_size."""
    max_len = room_after(n_prefix, block_size)
    if max_len < 2:
        raise ValueError(f"n_prefix={n_prefix} leaves no room in block_size {block_size}")
    train, cut_train = load_task(cfg.train_file, tokenizer, max_len, cfg.max_train_examples)
    val, cut_val = load_task(cfg.val_file, tokenizer, max_len)
    if cfg.eval_examples:
        val = val[:cfg.eval_examples]
    for name, cut, n in (("train", cut_train, len(train)), ("val", cut_val, len(val))):
        if cut:
            print(f"note: {cut} of {n} {name} examples were cut to {max_len} tokens (block_size - n_prefix)")
    return train, val


def make_prefix(cfg, model, tokenizer, device):
    """P: the only trainable parameters, random or initialised from the words of init_text."""
    prefix = build_prefix(cfg.method, model.config, cfg.n_prefix, cfg.reparam_hidden).to(device)
    if cfg.init == "text":
        ids = init_text_tokens(tokenizer, cfg.init_text, cfg.n_prefix)
        if isinstance(prefix, PromptTuning):
            prefix.init_from_tokens(model, ids)
        else:
            prefix.init_from_kv(model.key_values(torch.tensor([ids], device=device)))
    return prefix


def check_frozen_unchanged(originals: dict, path: str) -> int:
    """Every base tensor that did not train must be exactly what the file on disk holds. originals maps the
    base's names to its Parameters, taken before a method wrapped or unfroze anything. Returns the count."""
    disk = load_model(path, "cpu")[0].state_dict()
    frozen = {name: p for name, p in originals.items() if not p.requires_grad}
    changed = [name for name, p in frozen.items() if not torch.equal(p.detach().cpu(), disk[name])]
    if changed:
        raise RuntimeError(f"frozen base weights changed during tuning: {changed[:3]}")
    return len(frozen)


def val_loss(model, prefix, val, rt, par: Parallel = Parallel()) -> float:
    """The mean loss per target token over val (scoring.task_loss). Under torchrun each rank scores its
    share of val and the sums are added, so every rank gets the same number (and the same early stop)."""
    total, count = par.sum(*task_loss_terms(model, prefix, par.share(val), ctx=rt.autocast))
    if count == 0:
        raise ValueError("no completion tokens to score: every example's completion is empty or cut off")
    return total / count


def tune(cfg, rt, model, prefix, loss_fn, optimizer, train, val, base_loss: float, save_best,
         log_dir: str | None = None, par: Parallel = Parallel()) -> dict:
    """Minimise loss_fn(x, y) with optimizer over train, an evaluation on val every eval_interval steps
    (the prefix's loss, or the model's if prefix is None), save_best(best) at each better val loss, early
    stopping. Returns the summary.

    Under torchrun (par from prefixgpt/distributed.py) a step's global batch is batch_size × world
    examples, the same on every rank; each rank computes the gradient of its share, the trainable
    tensors' gradients are averaged, and every rank takes the same step. Rank 0 alone calls save_best
    and logs; the same global batches in one process give the same prefix (tests/test_scale.py)."""
    log = MetricsLog(log_dir, append=False) if log_dir and par.master else None
    params = [p for p in (prefix if prefix is not None else model).parameters() if p.requires_grad]
    par.broadcast(params)   # every rank starts from rank 0's prefix (or LoRA, adapters)
    global_batch = cfg.batch_size * par.world
    if len(train) < par.world:
        raise ValueError(f"{len(train)} training examples cannot be shared by {par.world} processes: "
                         "use fewer processes or more examples")
    stream = batches(train, min(global_batch, len(train)), seed=cfg.seed)

    def evaluate(it, known=None):
        loss = val_loss(model, prefix, val, rt, par) if known is None else known
        print(f"eval @ {it}: val loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})"
              + (" = the base alone: the method starts as the base" if known is not None else ""))
        if log:
            log.write(iter=it, val_loss=loss)
        return loss

    # LoRA (B = 0), adapters (W_up = 0), BitFit and fine-tuning leave the model as it was at step 0
    # (tests/test_methods.py), so their first evaluation is the base's loss, measured once already
    best = {"val_loss": evaluate(0, None if prefix is not None else base_loss), "iter": 0}
    if par.master:
        save_best(best)
    bad_evals, it, t0, stopping = 0, 0, time.time(), False
    t_last, bad_loss = t0, torch.zeros((), dtype=torch.bool, device=rt.device)
    model.train()  # dropout of the base (if any) as in its pretraining; frozen weights stay frozen
    with StopOnSignal() as stop:
        while it < cfg.max_iters and not stopping:
            set_lr(optimizer, lr := cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters))
            x, y = collate(par.share(next(stream)), rt.device)     # this rank's share of the global batch
            with rt.autocast:
                loss = loss_fn(x, y) * par.token_weight(y)          # × 1 in one process
            bad_loss |= ~torch.isfinite(loss.detach())   # checked at log steps: no GPU sync every step
            optimizer.zero_grad(set_to_none=True)
            rt.scaler.scale(loss).backward()
            par.average_gradients(params)                # the global batch's gradient, on every rank
            if cfg.grad_clip > 0:
                rt.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            rt.scaler.step(optimizer)
            rt.scaler.update()
            it += 1
            stopping = not par.enabled and stop.signal is not None   # under torchrun: at log steps, agreed
            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                signal = par.max(stop.signal or 0)          # any rank's signal stops every rank
                if signal and stop.signal is None:
                    stop.signal = signal
                stopping = signal > 0
                if par.any(bool(bad_loss))[0]:
                    raise ValueError(f"the loss became NaN or inf by iteration {it}: lower --learning_rate; "
                                     f"the best state so far (val loss {best['val_loss']:.4f}) is kept")
                ms = (time.time() - t_last) * 1000 / (cfg.log_interval if it % cfg.log_interval == 0
                                                       else it % cfg.log_interval)
                t_last = time.time()
                shown = par.sum(loss.item())[0] / par.world   # the global batch's loss (Σ_r n_r·L_r / N)
                print(f"iter {it}/{cfg.max_iters} | loss {shown:.4f} | lr {lr:.2e} | {ms:.0f} ms/iter | "
                      f"ETA {fmt_time((cfg.max_iters - it) * ms / 1000)}")
                if log:
                    log.write(iter=it, loss=shown, lr=lr, ms_per_iter=ms)
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                loss_now = evaluate(it)
                model.train()
                if loss_now < best["val_loss"]:
                    best, bad_evals = {"val_loss": loss_now, "iter": it}, 0
                    if par.master:
                        save_best(best)
                else:
                    bad_evals += 1
                    if bad_evals >= cfg.patience:
                        print(f"early stop: no better val loss in {cfg.patience} evaluations")
                        break
                if log:
                    log.plot(f"{cfg.method}: val loss per evaluation (base alone: {base_loss:.3f})")
                t_last = time.time()
    model.eval()
    if stop.signal is not None:
        print(f"stopped by signal {stop.signal} at iteration {it}; the best state (val loss "
              f"{best['val_loss']:.4f}, iteration {best['iter']}) is kept")
    summary = {"val_loss_base": base_loss, "best_val_loss": best["val_loss"], "best_iter": best["iter"],
               "iters": it, "seconds": time.time() - t0, "stopped_by": stop.signal}
    if log:
        log.write(summary=summary)
    return summary
