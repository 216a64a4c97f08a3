"""
optim.py — the optimiser and the learning-rate schedule that pretraining and prefix tuning share.

    optimizer = make_adamw(module, lr, weight_decay, betas, device_type)   # only what requires grad
    set_lr(optimizer, cosine_lr(it, max_lr, min_lr, warmup_iters, decay_iters))

It knows nothing about models, data or files: give it parameters and a step number.
"""
import math

import torch
import torch.nn as nn


def make_adamw(module: nn.Module, lr, weight_decay, betas=(0.9, 0.95), device_type="cpu"):
    """AdamW over the parameters that require grad only: matrices and embeddings decay, biases and
    LayerNorm gains do not (decaying a gain pulls it toward 0, which is not regularisation)."""
    # BEGIN SOLUTION A6.2: only the parameters that require grad; matrices (dim >= 2) decay, the rest do not
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    # END SOLUTION
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # fused kernels exist for CUDA and CPU in recent PyTorch; fall back quietly elsewhere
    fused = device_type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def cosine_lr(it: int, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup from max_lr/(warmup+1) (never 0 at step 0), then cosine down to min_lr."""
    if it < warmup_iters:
        return max_lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr
