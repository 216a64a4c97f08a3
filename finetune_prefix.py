"""
finetune_prefix.py — freeze a pretrained GPT and train only a prefix: argmin_P L(LM_θ(x; P), y), θ fixed.

    python finetune_prefix.py --base=out/demo/base/best.pt --train_file=data/e2e/train.jsonl \\
        --val_file=data/e2e/val.jsonl --out_dir=out/demo/e2e_prefix --method=prefix --n_prefix=10
    python finetune_prefix.py config/finetune_e2e.toml --method=prompt
    python finetune_prefix.py --help

Methods: prefix (a free key/value prefix in every layer), prefix-reparam (the same through an MLP,
folded away when saved), prompt (soft input embeddings). Writes to out_dir: prefix.pt (the best
prefix, a few KB, with its metrics), metrics.jsonl, loss.png, config.json.
"""
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from checkpoint import load_model
from cli import main_guard, parse, save_json
from data.tasks import batches, collate, load_task
from data.tokenizer import get_tokenizer
from model import make_adamw
from prefix import (PromptTuning, build_prefix, count_parameters, freeze, init_text_tokens, save_prefix,
                    weights_fingerprint)
from train import MetricsLog, cosine_lr, fmt_time, pick_device


@dataclass
class FinetuneConfig:
    base: str = "out/demo/base/best.pt"   # checkpoint written by train.py
    train_file: str = "data/e2e/train.jsonl"
    val_file: str = "data/e2e/val.jsonl"
    out_dir: str = "out/demo/e2e_prefix"
    overwrite: bool = False        # allow replacing an existing out_dir/prefix.pt
    method: str = "prefix"         # prefix | prefix-reparam | prompt
    n_prefix: int = 10             # P, the number of virtual tokens
    reparam_hidden: int = 512      # MLP width for prefix-reparam
    init: str = "random"           # random | text (the frozen model's own keys/values for init_text)
    init_text: str = "name eatType food area near"
    batch_size: int = 16
    max_iters: int = 400
    learning_rate: float = 1e-2
    min_lr: float = 1e-3
    warmup_iters: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_examples: int = 0         # 0 = the whole validation file
    patience: int = 4              # stop after this many evaluations without a better val loss
    max_train_examples: int = 0    # 0 = all (the low-data experiments set this)
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"


@torch.no_grad()
def task_loss(model, prefix, examples, batch_size=32) -> float:
    """Mean loss per target token (completion + end marker) over examples, with the prefix."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    prefix_kv = None if prefix is None else prefix(model)
    examples = sorted(examples, key=lambda e: len(e.tokens))   # a sum: the order is free, and this pads least
    for i in range(0, len(examples), batch_size):
        x, y = collate(examples[i:i + batch_size], device)
        logits, _ = model(x, prefix_kv=prefix_kv)
        mask = y != -1
        total += torch.nn.functional.cross_entropy(logits[mask], y[mask], reduction="sum").item()
        count += int(mask.sum())
    return total / max(count, 1)


def main(argv):
    cfg = FinetuneConfig()
    parse(argv, cfg, prog="finetune_prefix.py", description=__doc__.split("\n\n")[0])
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device == "cpu":
        torch.set_flush_denormal(True)
    prefix_path = os.path.join(cfg.out_dir, "prefix.pt")
    if os.path.exists(prefix_path) and not cfg.overwrite:
        raise ValueError(f"{prefix_path} already exists: pass --overwrite to replace it or --out_dir=... to keep it")

    # θ: the frozen base
    model, ckpt = load_model(cfg.base, device)
    freeze(model)
    fingerprint = weights_fingerprint(model)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    max_len = model.config.block_size - cfg.n_prefix
    if max_len < 2:
        raise ValueError(f"n_prefix={cfg.n_prefix} leaves no room in block_size {model.config.block_size}")
    train, cut_train = load_task(cfg.train_file, tokenizer, max_len, cfg.max_train_examples)
    val, cut_val = load_task(cfg.val_file, tokenizer, max_len)
    if cfg.eval_examples:
        val = val[:cfg.eval_examples]
    for name, cut, n in (("train", cut_train, len(train)), ("val", cut_val, len(val))):
        if cut:
            print(f"note: {cut} of {n} {name} examples were cut to {max_len} tokens (block_size - n_prefix)")

    # P: the only trainable parameters
    prefix = build_prefix(cfg.method, model.config, cfg.n_prefix, cfg.reparam_hidden).to(device)
    if cfg.init == "text":
        ids = init_text_tokens(tokenizer, cfg.init_text, cfg.n_prefix)
        if isinstance(prefix, PromptTuning):
            prefix.init_from_tokens(model, ids)
        else:
            prefix.init_from_kv(model.key_values(torch.tensor([ids], device=device)))
    elif cfg.init != "random":
        raise ValueError(f"--init must be 'random' or 'text', got {cfg.init!r}")
    counts = count_parameters(model, prefix)
    print(f"{cfg.method}: P={cfg.n_prefix} | trainable {counts['trainable']:,} | frozen {counts['frozen']:,} "
          f"| {counts['percent']:.3f}% of the base | {len(train)} train / {len(val)} val examples")

    os.makedirs(cfg.out_dir, exist_ok=True)
    save_json(os.path.join(cfg.out_dir, "config.json"), {"finetune": asdict(cfg), "parameters": counts,
                                                         "base_fingerprint": fingerprint})
    log = MetricsLog(cfg.out_dir, append=False)
    optimizer = make_adamw(prefix, cfg.learning_rate, cfg.weight_decay, device_type=device.split(":")[0])
    stream = batches(train, min(cfg.batch_size, len(train)), seed=cfg.seed)

    def evaluate(it):
        loss = task_loss(model, prefix, val)
        print(f"eval @ {it}: val loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):.2f})")
        log.write(iter=it, val_loss=loss, train_loss=float("nan"))
        return loss

    # the score to beat: the frozen base with no prefix at all
    base_loss = task_loss(model, None, val)
    print(f"the base alone (no prefix): val loss {base_loss:.4f} (perplexity {math.exp(min(base_loss, 50)):.2f})")
    best, best_iter, bad_evals = evaluate(0), 0, 0
    save_prefix(prefix_path, prefix.fold() if prefix.reparam else prefix, tokenizer.name, fingerprint,
                {"val_loss": best, "iter": 0, "val_loss_base": base_loss})
    t0 = t_last = time.time()
    model.train()  # dropout of the base (if any) as in its pretraining; its weights stay frozen
    it = 0
    while it < cfg.max_iters:
        lr = cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = collate(next(stream), device)
        _, loss = model(x, y, prefix_kv=prefix(model))
        if not math.isfinite(loss.item()):
            raise ValueError(f"loss is {loss.item()} at iteration {it}: lower --learning_rate; "
                             f"the best prefix so far is kept in {prefix_path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(prefix.parameters(), cfg.grad_clip)
        optimizer.step()
        it += 1
        if it % cfg.log_interval == 0:
            now = time.time()
            ms = (now - t_last) * 1000 / cfg.log_interval
            t_last = now
            print(f"iter {it}/{cfg.max_iters} | loss {loss.item():.4f} | lr {lr:.2e} | {ms:.0f} ms/iter | "
                  f"ETA {fmt_time((cfg.max_iters - it) * ms / 1000)}")
            log.write(iter=it, loss=loss.item(), lr=lr, ms_per_iter=ms)
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            val_loss = evaluate(it)
            model.train()
            if val_loss < best:
                best, best_iter, bad_evals = val_loss, it, 0
                save_prefix(prefix_path, prefix.fold() if prefix.reparam else prefix, tokenizer.name,
                            fingerprint, {"val_loss": best, "iter": it, "val_loss_base": base_loss})
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    print(f"early stop: no better val loss in {cfg.patience} evaluations")
                    break
            log.plot(f"{cfg.method} P={cfg.n_prefix}: val loss per evaluation (base alone: {base_loss:.3f})")
            t_last = time.time()
    elapsed = time.time() - t0

    # θ must be exactly what was loaded: compare every tensor with the file on disk.
    on_disk, _ = load_model(cfg.base, "cpu")
    disk = on_disk.state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), disk[k])]
    if changed:
        raise RuntimeError(f"base weights changed during prefix tuning: {changed[:3]}")
    summary = {"val_loss_base": base_loss, "best_val_loss": best, "best_iter": best_iter, "iters": it,
               "seconds": elapsed, "trainable": counts["trainable"], "percent": counts["percent"]}
    log.write(summary=summary)
    save_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    print(f"base weights unchanged: all {len(disk)} tensors bit-identical to {cfg.base}")
    print(f"done: {it} iterations in {elapsed:.1f} s | val loss: base alone {base_loss:.4f}, with the prefix "
          f"{best:.4f} (best, at iteration {best_iter}) | saved {prefix_path}")


if __name__ == "__main__":
    main_guard(main)
