"""
methods.py — the rest of the parameter-efficient family, each a small module whose forward is its equation,
and `attach`, which decides for every method what trains.

    LoRA     h = W₀·x + (α/r)·B·A·x        on chosen Linear layers; A random, B zero, so the model is
                                           unchanged at step 0; merge() folds (α/r)·B·A into W₀
    Adapter  h = y + W_up·f(W_down·y)      after attention and after the MLP of every block (Houlsby);
                                           W_up zero, so the model is unchanged at step 0
    BitFit   only the biases train
    FT-top2  only the top two blocks and the final LayerNorm train
    FT       everything trains

Prefix and prompt tuning live in prefix.py: they add keys and values in front of the input instead of
changing any weight, so the base stays shareable. This module knows nothing about data, files or loops.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT
from prefix import PREFIX_METHODS, freeze

WEIGHT_METHODS = ("lora", "adapter", "bitfit", "ft-top2", "ft")
METHODS = PREFIX_METHODS + WEIGHT_METHODS
LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # the Linear layers of a block


class LoRALinear(nn.Module):
    """A frozen Linear W₀ plus a trainable rank-r update: h = W₀·x + (α/r)·B·A·x (Hu et al. 2021)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.r, self.alpha = base, r, alpha
        # A (r, in) random as in the paper (Kaiming-uniform scale), B (out, r) zero: B·A = 0 at step 0
        self.A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))

    def forward(self, x):
        """x (..., in) → (..., out)."""
        # BEGIN SOLUTION A7.1: W₀x + (α/r)·B·A·x, applying A then B to x (never forming the (out, in) product)
        return self.base(x) + (self.alpha / self.r) * F.linear(F.linear(x, self.A), self.B)   # W₀x + (α/r)·B·A·x
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """One plain Linear with W = W₀ + (α/r)·B·A: the same outputs, no extra cost at inference."""
        # BEGIN SOLUTION A7.2: a new Linear with W = W₀ + (α/r)·B·A and W₀'s bias, frozen as W₀ was
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged = merged.to(self.base.weight.device)
        merged.weight.copy_(self.base.weight + (self.alpha / self.r) * self.B @ self.A)     # (out, in)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged.requires_grad_(self.base.weight.requires_grad)
        # END SOLUTION


class Adapter(nn.Module):
    """A bottleneck after a sublayer: h = y + W_up·f(W_down·y), f = GELU (Houlsby et al. 2019)."""

    def __init__(self, n_embd: int, size: int):
        super().__init__()
        self.down = nn.Linear(n_embd, size)                  # W_down (size, C)
        self.up = nn.Linear(size, n_embd)                    # W_up (C, size), zero: h = y at step 0
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y):
        """y (B, T, C) → (B, T, C)."""
        # BEGIN SOLUTION A7.3: the bottleneck added to its input: y + W_up·GELU(W_down·y)
        return y + self.up(F.gelu(self.down(y)))
        # END SOLUTION


class AdaptedAttention(nn.Module):
    """A block's attention followed by an adapter; the keys/values it returns for a cache are untouched."""

    def __init__(self, attn: nn.Module, adapter: Adapter):
        super().__init__()
        self.attn, self.adapter = attn, adapter

    def forward(self, x, prefix_k, prefix_v, prefix_mask, fast, cache=None):
        y, present = self.attn(x, prefix_k, prefix_v, prefix_mask, fast, cache)
        return self.adapter(y), present


class AdaptedMLP(nn.Module):
    """A block's MLP followed by an adapter."""

    def __init__(self, mlp: nn.Module, adapter: Adapter):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x):
        return self.adapter(self.mlp(x))


def _replace(root: nn.Module, path: str, new: nn.Module):
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def attach(method: str, model: GPT, lora_r: int = 4, lora_alpha: float = 8.0,
           lora_targets=("attn.c_attn",), adapter_size: int = 16) -> GPT:
    """Freeze the model, then add or unfreeze what `method` trains; the model is changed in place and
    returned. Prefix methods train a separate module (prefix.py): for them everything stays frozen."""
    freeze(model)
    blocks = model.transformer.h
    if method == "lora":
        for i, block in enumerate(blocks):
            for target in lora_targets:
                if target not in LORA_TARGETS:
                    raise ValueError(f"LoRA target {target!r} is not one of {', '.join(LORA_TARGETS)}")
                _replace(block, target, LoRALinear(block.get_submodule(target), lora_r, lora_alpha))
    elif method == "adapter":
        for block in blocks:
            device = block.ln_1.weight.device
            block.attn = AdaptedAttention(block.attn, Adapter(model.config.n_embd, adapter_size).to(device))
            block.mlp = AdaptedMLP(block.mlp, Adapter(model.config.n_embd, adapter_size).to(device))
    elif method == "bitfit":
        biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
        if not biases:
            raise ValueError("BitFit trains the biases, and this model has none (it was built with bias=false)")
        for p in biases:
            p.requires_grad_(True)
    elif method == "ft-top2":
        for p in list(blocks[-2:].parameters()) + list(model.transformer.ln_f.parameters()):
            p.requires_grad_(True)
    elif method == "ft":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method not in PREFIX_METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return model


def delta_state(model: GPT) -> dict:
    """The tensors that trained (requires_grad), by name: all a LoRA, adapter or BitFit file needs."""
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold every LoRA update into its Linear: a plain GPT again, with the same logits."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merge())
    return model
