"""
finetune_prefix.py — freeze a pretrained GPT and train only a prefix: argmin_P L(LM_θ(x; P), y), θ fixed.

    python finetune_prefix.py --base=out/demo/base/best.pt --train_file=data/e2e/train.jsonl \\
        --val_file=data/e2e/val.jsonl --out_dir=out/e2e_prefix --method=prefix --n_prefix=10
    python finetune_prefix.py config/finetune_e2e.toml --method=prompt
    python finetune_prefix.py --help

Methods: prefix (a free key/value prefix in every layer), prefix-reparam (the same through an MLP,
folded away when saved), prompt (soft input embeddings). Writes to out_dir: prefix.pt (the best
prefix, a few KB, with its metrics), metrics.jsonl, loss.png, config.json, summary.json.
Ctrl-C or SIGTERM stops after the current step; the best prefix so far stays in prefix.pt.
"""
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from checkpoint import load_model, save_prefix, weights_fingerprint
from cli import main_guard, parse, setting
from data.tasks import batches, collate, load_task
from data.tokenizer import get_tokenizer
from model import room_after
from optim import cosine_lr, make_adamw, set_lr
from prefix import PREFIX_METHODS, PromptTuning, build_prefix, count_parameters, freeze, init_text_tokens
from runlog import MetricsLog, claim_run_dir, fmt_time, write_json, write_run_config
from runtime import DEVICE_PATTERN, DTYPES, StopOnSignal, setup_runtime
from scoring import task_loss


@dataclass
class FinetuneConfig:
    base: str = "out/demo/base/best.pt"   # a train.py checkpoint, a GPT-2 name (gpt2, gpt2-medium, ...) or HF folder
    train_file: str = "data/e2e/train.jsonl"
    val_file: str = "data/e2e/val.jsonl"
    out_dir: str = "out/e2e_prefix"
    overwrite: bool = False        # allow replacing an earlier prefix-tuning run in out_dir
    method: str = setting("prefix", choices=PREFIX_METHODS)
    n_prefix: int = setting(10, min=1)          # P, the number of virtual tokens
    reparam_hidden: int = setting(512, min=1)   # MLP width for prefix-reparam
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
    eval_examples: int = setting(0, min=0)      # 0 = the whole validation file
    patience: int = setting(4, min=1)           # stop after this many evaluations without a better val loss
    max_train_examples: int = setting(0, min=0)  # 0 = all (the low-data experiments set this)
    log_interval: int = setting(10, min=1)
    seed: int = 1337
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("auto", choices=DTYPES)


def load_examples(cfg: FinetuneConfig, tokenizer, block_size: int):
    """Train and val examples, each cut to the room the prefix leaves in block_size."""
    max_len = room_after(cfg.n_prefix, block_size)
    if max_len < 2:
        raise ValueError(f"n_prefix={cfg.n_prefix} leaves no room in block_size {block_size}")
    train, cut_train = load_task(cfg.train_file, tokenizer, max_len, cfg.max_train_examples)
    val, cut_val = load_task(cfg.val_file, tokenizer, max_len)
    if cfg.eval_examples:
        val = val[:cfg.eval_examples]
    for name, cut, n in (("train", cut_train, len(train)), ("val", cut_val, len(val))):
        if cut:
            print(f"note: {cut} of {n} {name} examples were cut to {max_len} tokens (block_size - n_prefix)")
    return train, val


def make_prefix(cfg: FinetuneConfig, model, tokenizer, device):
    """P: the only trainable parameters, random or initialised from the words of init_text."""
    prefix = build_prefix(cfg.method, model.config, cfg.n_prefix, cfg.reparam_hidden).to(device)
    if cfg.init == "text":
        ids = init_text_tokens(tokenizer, cfg.init_text, cfg.n_prefix)
        if isinstance(prefix, PromptTuning):
            prefix.init_from_tokens(model, ids)
        else:
            prefix.init_from_kv(model.key_values(torch.tensor([ids], device=device)))
    return prefix


def check_base_unchanged(model, path: str) -> int:
    """θ must be exactly what was loaded: compare every tensor with the file on disk. Returns the count."""
    disk = load_model(path, "cpu")[0].state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), disk[k])]
    if changed:
        raise RuntimeError(f"base weights changed during prefix tuning: {changed[:3]}")
    return len(disk)


def main(argv):
    cfg = FinetuneConfig()
    parse(argv, cfg, prog="finetune_prefix.py", description=__doc__.split("\n\n")[0])
    claim_run_dir(cfg.out_dir, "prefix", cfg.overwrite)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, ckpt = load_model(cfg.base, rt.device)     # θ: the frozen base
    freeze(model)
    fingerprint = weights_fingerprint(model)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    train, val = load_examples(cfg, tokenizer, model.config.block_size)
    prefix = make_prefix(cfg, model, tokenizer, rt.device)
    counts = count_parameters(model, prefix)
    print(f"{cfg.method}: P={cfg.n_prefix} | trainable {counts['trainable']:,} | frozen {counts['frozen']:,} "
          f"| {counts['percent']:.3f}% of the base | {len(train)} train / {len(val)} val examples "
          f"| {rt.device}, {rt.dtype}")
    write_run_config(cfg.out_dir, "prefix", {"finetune": asdict(cfg), "parameters": counts,
                                             "base_fingerprint": fingerprint})
    prefix_path = os.path.join(cfg.out_dir, "prefix.pt")
    best = tune(cfg, rt, model, prefix, train, val, tokenizer.name, fingerprint, prefix_path)
    n_tensors = check_base_unchanged(model, cfg.base)
    summary = {**best, "trainable": counts["trainable"], "percent": counts["percent"]}
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    print(f"base weights unchanged: all {n_tensors} tensors bit-identical to {cfg.base}")
    print(f"done: {best['iters']} iterations in {best['seconds']:.1f} s | val loss: base alone "
          f"{best['val_loss_base']:.4f}, with the prefix {best['best_val_loss']:.4f} (best, at iteration "
          f"{best['best_iter']}) | saved {prefix_path}")
    if best["stopped_by"] is not None:
        raise SystemExit(130)


def tune(cfg, rt, model, prefix, train, val, tokenizer_name, fingerprint, prefix_path) -> dict:
    """The loop: AdamW on P alone, an evaluation every eval_interval steps, the best prefix saved, early
    stopping. Returns the summary of the run."""
    log = MetricsLog(cfg.out_dir, append=False)
    optimizer = make_adamw(prefix, cfg.learning_rate, cfg.weight_decay, device_type=rt.device_type)
    stream = batches(train, min(cfg.batch_size, len(train)), seed=cfg.seed)
    evaluate = lambda p: task_loss(model, p, val, ctx=rt.autocast)                      # noqa: E731
    base_loss = evaluate(None)   # the score to beat: the frozen base with no prefix at all
    print(f"the base alone (no prefix): val loss {base_loss:.4f} (perplexity {math.exp(min(base_loss, 50)):.2f})")
    best = {"val_loss": evaluate(prefix), "iter": 0}
    print(f"eval @ 0: val loss {best['val_loss']:.4f}")
    log.write(iter=0, val_loss=best["val_loss"])
    save_prefix(prefix_path, prefix.fold(), tokenizer_name, fingerprint, {**best, "val_loss_base": base_loss})
    bad_evals, it, t0 = 0, 0, time.time()
    t_last, bad_loss = t0, torch.zeros((), dtype=torch.bool, device=rt.device)
    model.train()  # dropout of the base (if any) as in its pretraining; its weights stay frozen
    with StopOnSignal() as stop:
        while it < cfg.max_iters and stop.signal is None:
            set_lr(optimizer, lr := cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters))
            x, y = collate(next(stream), rt.device)
            with rt.autocast:
                _, loss = model(x, y, prefix_kv=prefix(model))
            bad_loss |= ~torch.isfinite(loss.detach())   # checked at log steps: no GPU sync every step
            optimizer.zero_grad(set_to_none=True)
            rt.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                rt.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(prefix.parameters(), cfg.grad_clip)
            rt.scaler.step(optimizer)
            rt.scaler.update()
            it += 1
            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                if bool(bad_loss):
                    raise ValueError(f"the loss became NaN or inf by iteration {it}: lower --learning_rate; "
                                     f"the best prefix so far (val loss {best['val_loss']:.4f}) is kept in {prefix_path}")
                ms = (time.time() - t_last) * 1000 / (cfg.log_interval if it % cfg.log_interval == 0
                                                       else it % cfg.log_interval)
                t_last = time.time()
                print(f"iter {it}/{cfg.max_iters} | loss {loss.item():.4f} | lr {lr:.2e} | {ms:.0f} ms/iter | "
                      f"ETA {fmt_time((cfg.max_iters - it) * ms / 1000)}")
                log.write(iter=it, loss=loss.item(), lr=lr, ms_per_iter=ms)
            if it % cfg.eval_interval == 0 or it == cfg.max_iters:
                val_loss = evaluate(prefix)
                print(f"eval @ {it}: val loss {val_loss:.4f} (perplexity {math.exp(min(val_loss, 50)):.2f})")
                log.write(iter=it, val_loss=val_loss)
                if val_loss < best["val_loss"]:
                    best, bad_evals = {"val_loss": val_loss, "iter": it}, 0
                    save_prefix(prefix_path, prefix.fold(), tokenizer_name, fingerprint, {**best, "val_loss_base": base_loss})
                else:
                    bad_evals += 1
                    if bad_evals >= cfg.patience:
                        print(f"early stop: no better val loss in {cfg.patience} evaluations")
                        break
                log.plot(f"{cfg.method} P={cfg.n_prefix}: val loss per evaluation (base alone: {base_loss:.3f})")
                t_last = time.time()
    if stop.signal is not None:
        print(f"stopped by signal {stop.signal} at iteration {it}; the best prefix (val loss "
              f"{best['val_loss']:.4f}, iteration {best['iter']}) is kept in {prefix_path}")
    summary = {"val_loss_base": base_loss, "best_val_loss": best["val_loss"], "best_iter": best["iter"],
               "iters": it, "seconds": time.time() - t0, "stopped_by": stop.signal}
    log.write(summary=summary)
    return summary


if __name__ == "__main__":
    main_guard(main)
