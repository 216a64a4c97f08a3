"""
finetune_prefix.py — freeze a pretrained GPT and train only a prefix: argmin_P L(LM_θ(x; P), y), θ fixed.

    python finetune_prefix.py --base=out/demo/base/best.pt --train_file=data/e2e/train.jsonl \\
        --val_file=data/e2e/val.jsonl --out_dir=out/e2e_prefix --method=prefix --n_prefix=10
    python finetune_prefix.py config/finetune_e2e.toml --method=prompt
    python finetune_prefix.py --help

Methods: prefix (a free key/value prefix in every layer), prefix-reparam (the same through an MLP,
folded away when saved), prompt (soft input embeddings). For comparison, the rest of the family trains
through the same loop (tuning.tune): lora, adapter, bitfit (saved as delta.pt: only what trained),
ft-top2 and ft (saved as model.pt, a checkpoint). Writes to out_dir: prefix.pt (the best prefix, a few
KB, with its metrics), metrics.jsonl, loss.png, config.json, summary.json.
Ctrl-C or SIGTERM stops after the current step; the best state so far stays saved.
"""
import math
import os
from dataclasses import asdict, dataclass

from checkpoint import load_model, save_checkpoint, save_delta, save_prefix, weights_fingerprint
from cli import main_guard, parse, setting
from data.tokenizer import get_tokenizer
from methods import LORA_TARGETS, METHODS, attach
from prefix import PREFIX_METHODS, count_parameters
from runlog import claim_run_dir, write_json, write_run_config
from runtime import DEVICE_PATTERN, DTYPES, setup_runtime
from scoring import task_loss
from tuning import check_frozen_unchanged, load_examples, make_prefix, tune


@dataclass
class FinetuneConfig:
    base: str = "out/demo/base/best.pt"   # a train.py checkpoint, a GPT-2 name (gpt2, gpt2-medium, ...) or HF folder
    train_file: str = "data/e2e/train.jsonl"
    val_file: str = "data/e2e/val.jsonl"
    out_dir: str = "out/e2e_prefix"
    overwrite: bool = False        # allow replacing an earlier prefix-tuning run in out_dir
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
    eval_examples: int = setting(0, min=0)      # 0 = the whole validation file
    patience: int = setting(4, min=1)           # stop after this many evaluations without a better val loss
    max_train_examples: int = setting(0, min=0)  # 0 = all (the low-data experiments set this)
    log_interval: int = setting(10, min=1)
    seed: int = 1337
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("auto", choices=DTYPES)


def main(argv):
    cfg = FinetuneConfig()
    parse(argv, cfg, prog="finetune_prefix.py", description=__doc__.split("\n\n")[0])
    claim_run_dir(cfg.out_dir, "tune", cfg.overwrite)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, ckpt = load_model(cfg.base, rt.device)     # θ: the base
    fingerprint, n_base = weights_fingerprint(model), model.num_params(non_embedding=False)
    originals = dict(model.named_parameters())       # the base's tensors, before a method wraps any
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    is_prefix = cfg.method in PREFIX_METHODS
    train, val = load_examples(cfg, tokenizer, model.config.block_size, cfg.n_prefix if is_prefix else 0)
    base_loss = task_loss(model, None, val, ctx=rt.autocast)   # the score to beat: the base alone
    print(f"the base alone (no prefix): val loss {base_loss:.4f} (perplexity {math.exp(min(base_loss, 50)):.2f})")
    attach(cfg.method, model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, cfg.adapter_size)
    prefix = make_prefix(cfg, model, tokenizer, rt.device) if is_prefix else None
    counts = count_parameters(model, prefix, n_base)
    print(f"{cfg.method}: " + (f"P={cfg.n_prefix} | " if is_prefix else "") + f"trainable {counts['trainable']:,} "
          f"| frozen {counts['frozen']:,} | {counts['percent']:.3f}% of the base | {len(train)} train / {len(val)} "
          f"val examples | {rt.device}, {rt.dtype}")
    write_run_config(cfg.out_dir, "tune", {"finetune": asdict(cfg), "parameters": counts,
                                           "base_fingerprint": fingerprint})
    path = os.path.join(cfg.out_dir, OUTPUT[kind_of(cfg.method)])

    def save_best(best):   # the method's own file: a prefix, the tensors that trained, or a checkpoint
        metrics = {**best, "val_loss_base": base_loss}
        if is_prefix:
            save_prefix(path, prefix.fold(), tokenizer.name, fingerprint, metrics)
        elif kind_of(cfg.method) == "delta":
            save_delta(path, model, cfg.method, delta_settings(cfg), tokenizer.name, fingerprint, metrics)
        else:
            save_checkpoint(path, model, tokenizer.name, val_loss=best["val_loss"])
    best = tune(cfg, rt, model, prefix, train, val, base_loss, save_best, cfg.out_dir)
    n_frozen = check_frozen_unchanged(originals, cfg.base)
    write_json(os.path.join(cfg.out_dir, "summary.json"), {**best, "trainable": counts["trainable"],
                                                           "percent": counts["percent"], "method": cfg.method})
    print(f"base weights unchanged: all {n_frozen} frozen tensors bit-identical to {cfg.base}" if n_frozen else
          f"{cfg.method}: every tensor of the base trained (none frozen to check); the base file is untouched")
    print(f"done: {best['iters']} iterations in {best['seconds']:.1f} s | val loss: base alone "
          f"{best['val_loss_base']:.4f}, with {cfg.method} {best['best_val_loss']:.4f} (best, at iteration "
          f"{best['best_iter']}) | saved {path}")
    if best["stopped_by"] is not None:
        print(f"the best {'prefix' if is_prefix else 'state'} so far is kept in {path}")
        raise SystemExit(130)


def kind_of(method: str) -> str:
    """What a method saves: a prefix file, a delta file (only the tensors that trained), or a checkpoint."""
    return "prefix" if method in PREFIX_METHODS else ("delta" if method in ("lora", "adapter", "bitfit") else "model")


OUTPUT = {"prefix": "prefix.pt", "delta": "delta.pt", "model": "model.pt"}


def delta_settings(cfg) -> dict:
    return {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_targets": list(cfg.lora_targets),
            "adapter_size": cfg.adapter_size}


if __name__ == "__main__":
    main_guard(main)
