"""
checkpoint.py — saving and loading without losing or trusting anything.

Writes are atomic (a temporary file, then a rename), so a crash or Ctrl-C mid-save leaves the previous
file whole. Loads use torch.load(weights_only=True), which refuses pickled code: a checkpoint or prefix
from someone else can hold tensors and plain data, never objects that run when unpickled.
"""
import os
import pickle

import torch

from model import GPT, GPTConfig

CHECKPOINT_FORMAT = "prefixgpt-checkpoint/1"


def atomic_torch_save(obj, path: str):
    """Write to path.tmp, then rename: a crash mid-write never leaves a half-written file at path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_torch_load(path: str, what: str = "file"):
    """torch.load that never runs pickled code, with one-line errors for missing or damaged files."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to load {path}: it holds pickled objects beyond tensors and plain "
                         f"data, which could run code ({str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # truncated, or not a torch file at all
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise ValueError(f"cannot read {what} {path}: it is corrupt or not a torch file "
                         f"({type(e).__name__}: {first})") from None


def load_model(path: str, device="cpu"):
    """A GPT from a checkpoint written by train.py. Returns (model in eval mode, checkpoint dict)."""
    ckpt = safe_torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a prefixgpt checkpoint (format {CHECKPOINT_FORMAT}); "
                         "make one with train.py")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
