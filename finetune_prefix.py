"""
finetune_prefix.py — freeze a pretrained GPT and train only a prefix: argmin_P L(LM_θ(x; P), y), θ fixed.

    python finetune_prefix.py --base=out/demo/base/best.pt --train_file=data/e2e/train.jsonl \\
        --val_file=data/e2e/val.jsonl --out_dir=out/e2e_prefix --method=prefix --n_prefix=10
    python finetune_prefix.py config/finetune_e2e.toml --method=prompt
    torchrun --standalone --nproc_per_node=2 finetune_prefix.py ...   # data parallel: batch_size per process
    python finetune_prefix.py --help

Methods: prefix (a free key/value prefix in every layer), prefix-reparam (the same through an MLP,
folded away when saved), prompt (soft input embeddings). For comparison, the rest of the family trains
through the same loop (tuning.tune): lora, adapter, bitfit (saved as delta.pt: only what trained),
ft-top2 and ft (saved as model.pt, a checkpoint). Writes to out_dir: prefix.pt (the best prefix, a few
KB, with its metrics), metrics.jsonl, loss.png, config.json, summary.json. On a GPT-2 base,
--save_peft=DIR also writes the best prefix (or LoRA) as a PEFT adapter folder that
PeftModel.from_pretrained loads on the same GPT-2 (prefix, prefix-reparam folded, prompt, lora;
prefixgpt/peft_io.py).
Ctrl-C or SIGTERM stops after the current step; the best state so far stays saved.
Under torchrun every method trains data parallel (prefixgpt/distributed.py): each process takes its share
of a global batch of batch_size × processes examples, only the trainable tensors' gradients are averaged,
rank 0 writes every file; NCCL on GPUs (one a process), Gloo on CPU.
"""
import math
import os
from dataclasses import asdict, dataclass

from data.tokenizer import get_tokenizer
from prefix import PREFIX_METHODS, count_parameters, freeze
from prefixgpt.checkpoint import (load_delta, load_model, load_prefix, save_checkpoint, save_delta, save_prefix,
                                  weights_fingerprint)
from prefixgpt.cli import main_guard, parse, setting
from prefixgpt.distributed import leave, quiet_unless_master, setup_processes
from prefixgpt.methods import attach
from prefixgpt.optim import make_adamw
from prefixgpt.peft_io import save_peft, save_peft_lora
from prefixgpt.runlog import claim_run_dir, write_json, write_run_config
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, setup_runtime
from prefixgpt.tuning import TuneConfig, check_frozen_unchanged, load_examples, make_prefix, tune, val_loss


@dataclass
class FinetuneConfig(TuneConfig):
    """The tuning settings (prefixgpt/tuning.py's TuneConfig: method, n_prefix, learning_rate, ...) and these."""
    base: str = "out/demo/base/best.pt"   # a train.py checkpoint, a GPT-2 name (gpt2, gpt2-medium, ...) or HF folder
    train_file: str = "data/e2e/train.jsonl"
    val_file: str = "data/e2e/val.jsonl"
    out_dir: str = "out/e2e_prefix"
    overwrite: bool = False        # allow replacing an earlier prefix-tuning run in out_dir
    eval_examples: int = setting(0, min=0)      # 0 = the whole validation file
    max_train_examples: int = setting(0, min=0)  # 0 = all (the low-data experiments set this)
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("auto", choices=DTYPES)
    save_peft: str = ""            # also write the best prefix as a PEFT adapter folder here (a GPT-2 base)
    grad_checkpoint: bool = False  # recompute each block in the backward: less memory, about a third more time

    def validate(self):
        if self.save_peft and self.method not in (*PREFIX_METHODS, "lora"):
            raise ValueError(f"--save_peft writes a prefix, a prompt or LoRA as a PEFT folder: --method={self.method} "
                             f"has no PEFT layout here (use one of {', '.join(PREFIX_METHODS)}, lora)")
        if self.save_peft and os.path.exists(self.save_peft) and (not os.path.isdir(self.save_peft) or (
                os.listdir(self.save_peft) and not self.overwrite)):
            raise ValueError(f"--save_peft={self.save_peft} exists and is not an empty folder: give a new one, "
                             "or --overwrite")


def main(argv):
    cfg = FinetuneConfig()
    parse(argv, cfg, prog="finetune_prefix.py", description=__doc__.split("\n\n")[0])
    par = setup_processes(cfg.device)   # rank 0 of 1, unless torchrun started several processes
    quiet_unless_master(par)
    if par.master:
        claim_run_dir(cfg.out_dir, "tune", cfg.overwrite)
    rt = setup_runtime(par.device, cfg.dtype, cfg.seed)

    # 1. the pretrained base θ, and the score to beat: its val loss with no prefix
    model, ckpt = load_model(cfg.base, rt.device)
    model.grad_checkpoint = cfg.grad_checkpoint   # a prefix needs every layer's activations: recompute them
    if cfg.save_peft and ckpt["tokenizer"] != "gpt2":
        raise ValueError(f"--save_peft: a PEFT adapter runs on a Hugging Face GPT-2, and {cfg.base} is a "
                         f"{ckpt['tokenizer']} model: pass a GPT-2 name or folder as --base")
    fingerprint, n_base = weights_fingerprint(model), model.num_params(non_embedding=False)
    originals = dict(model.named_parameters())       # the base's tensors, before a method wraps any
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    is_prefix = cfg.method in PREFIX_METHODS
    train, val = load_examples(cfg, tokenizer, model.config.block_size, cfg.n_prefix if is_prefix else 0)
    base_loss = val_loss(model, None, val, rt, par)
    print(f"the base alone (no prefix): val loss {base_loss:.4f} (perplexity {math.exp(min(base_loss, 50)):.2f})")

    # 2. freeze θ: no base parameter takes a gradient
    freeze(model)

    # 3. what trains, and the loss it is trained on
    if is_prefix:
        prefix = make_prefix(cfg, model, tokenizer, rt.device)     # P: n_layer × (key, value) × n_prefix slots

        def loss_fn(x, y):   # L(LM_θ(x; P), y): the frozen model reads every layer's prefix keys/values first
            _, loss = model(x, y, prefix_kv=prefix(model))
            return loss
        trainable = prefix
    else:   # the rest of the family: attach adds (LoRA, adapters) or unfreezes (BitFit, FT) what trains
        prefix = None
        attach(cfg.method, model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, cfg.adapter_size)

        def loss_fn(x, y):
            _, loss = model(x, y)
            return loss
        trainable = model

    # 4. an optimiser over what trains, and only that: for a prefix, P's parameters; θ is never in it
    optimizer = make_adamw(trainable, cfg.learning_rate, cfg.weight_decay, device_type=rt.device_type)
    counts = count_parameters(model, prefix, n_base)
    print(f"{cfg.method}: " + (f"P={cfg.n_prefix} | " if is_prefix else "") + f"trainable {counts['trainable']:,} "
          f"| frozen {counts['frozen']:,} | {counts['percent']:.3f}% of the base | {len(train)} train / {len(val)} "
          f"val examples | {rt.device}{f' x{par.world}' if par.enabled else ''}, {rt.dtype}")
    if par.master:
        write_run_config(cfg.out_dir, "tune", {"finetune": asdict(cfg), "parameters": counts,
                                               "base_fingerprint": fingerprint, "world_size": par.world})

    # 5. train (prefixgpt/tuning.py: the loop every method shares), keeping the best state by val loss
    path = os.path.join(cfg.out_dir, OUTPUT[kind_of(cfg.method)])

    def save_best(best):   # the method's own file: a prefix, the tensors that trained, or a checkpoint
        metrics = {**best, "val_loss_base": base_loss}
        if is_prefix:
            save_prefix(path, prefix.fold(), tokenizer.name, fingerprint, metrics)
        elif kind_of(cfg.method) == "delta":
            save_delta(path, model, cfg.method, delta_settings(cfg), tokenizer.name, fingerprint, metrics)
        else:
            save_checkpoint(path, model, tokenizer.name, val_loss=best["val_loss"])
    best = tune(cfg, rt, model, prefix, loss_fn, optimizer, train, val, base_loss, save_best, cfg.out_dir, par)
    if not par.master:    # rank 0 checks and writes what follows; the others wait for it in leave
        leave(130 if best["stopped_by"] is not None else 0, par)

    # 6. proof that only P trained: every frozen tensor still equals the base file, bit for bit
    n_frozen = check_frozen_unchanged(originals, cfg.base)
    write_json(os.path.join(cfg.out_dir, "summary.json"), {**best, "trainable": counts["trainable"],
                                                           "percent": counts["percent"], "method": cfg.method})
    print(f"base weights unchanged: all {n_frozen} frozen tensors bit-identical to {cfg.base}" if n_frozen else
          f"{cfg.method}: every tensor of the base trained (none frozen to check); the base file is untouched")
    print(f"done: {best['iters']} iterations in {best['seconds']:.1f} s | val loss: base alone "
          f"{best['val_loss_base']:.4f}, with {cfg.method} {best['best_val_loss']:.4f} (best, at iteration "
          f"{best['best_iter']}) | saved {path}")
    if cfg.save_peft and is_prefix:   # the best prefix, as saved, in PEFT's layout
        save_peft(load_prefix(path, model)[0], cfg.save_peft, base_model_name_or_path=cfg.base)
    elif cfg.save_peft:               # the best LoRA, as saved, on a fresh copy of the base
        best_lora, _ = load_delta(path, load_model(cfg.base, "cpu")[0])
        save_peft_lora(best_lora, cfg.save_peft, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, cfg.base)
    if cfg.save_peft:
        print(f"wrote the PEFT adapter folder {cfg.save_peft} (PeftModel.from_pretrained(<{cfg.base}>, it))")
    if best["stopped_by"] is not None:
        print(f"the best {'prefix' if is_prefix else 'state'} so far is kept in {path}")
    leave(130 if best["stopped_by"] is not None else 0, par)


def kind_of(method: str) -> str:
    """What a method saves: a prefix file, a delta file (only the tensors that trained), or a checkpoint."""
    return "prefix" if method in PREFIX_METHODS else ("delta" if method in ("lora", "adapter", "bitfit") else "model")


OUTPUT = {"prefix": "prefix.pt", "delta": "delta.pt", "model": "model.pt"}


def delta_settings(cfg) -> dict:
    return {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_targets": list(cfg.lora_targets),
            "adapter_size": cfg.adapter_size}


if __name__ == "__main__":
    main_guard(main)
