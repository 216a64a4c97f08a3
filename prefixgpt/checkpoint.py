"""
checkpoint.py — the project's two file formats, in one place: a pretraining checkpoint and a prefix file.

    save_checkpoint(path, model, optimizer, ...)     load_checkpoint(path) → dict     load_model(path) → GPT
    save_prefix(path, prefix, tokenizer, ...)        load_prefix(path, model) → module, metadata

Saving never loses work: a file is written atomically (data.files.atomic_write), and weights that hold a
NaN or an infinity are never written (NonFiniteWeights), so a diverged run cannot replace the last good
checkpoint. Loading never trusts a file: torch.load(weights_only=True) refuses pickled code, every key
and tensor the format needs is checked and a missing one named, and a checkpoint's weights must match the
checksum stored beside them, so a damaged file is reported as damaged rather than trained on.

This module knows the formats; it knows nothing about training loops or command lines.
"""
import hashlib
import os
import zipfile

import torch

from model import GPT, GPTConfig
from prefix import PREFIX_METHODS, build_prefix, method_of
from prefixgpt.gpt2 import is_gpt2_base, load_gpt2
from prefixgpt.methods import attach, delta_state
from prefixgpt.peft_io import ADAPTER_CONFIG, load_peft, load_peft_lora
from prefixgpt.torchio import safe_torch_load, save_torch

CHECKPOINT_FORMAT = "prefixgpt-checkpoint/1"
PREFIX_FORMAT = "prefixgpt-prefix/1"
DELTA_FORMAT = "prefixgpt-delta/1"      # LoRA, adapter or BitFit: only the tensors that trained
CHECKPOINT_KEYS = ("model", "model_config", "tokenizer")              # what any reader needs
RESUME_KEYS = ("optimizer", "train_config", "iter_num", "best_val_loss", "rng")   # what --resume needs
PREFIX_KEYS = ("method", "n_prefix", "model", "tokenizer", "state")


class NonFiniteWeights(ValueError):
    """Weights with NaN or inf: never saved, never loaded."""


def state_checksum(state: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: a fingerprint of a set of weights."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: tells a prefix which base it was trained on."""
    return state_checksum(model.state_dict())[:16]


def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors in state that hold a NaN or an infinity."""
    return [k for k, t in state.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_fits(blob: dict, path: str, what: str, model: GPT, tokenizer: str | None, base_fingerprint: str | None):
    """A prefix or delta file must fit `model`: its dimensions, its tokenizer (when given), and the
    fingerprint of the base weights it was trained on (when both are known)."""
    want, have = blob["model"], model.config
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        if want.get(key) != getattr(have, key):
            raise ValueError(f"{what} {path} was made for a model with {key}={want.get(key)}, but this model has "
                             f"{key}={getattr(have, key)}: load it with the base model it was trained on")
    if tokenizer is not None and blob["tokenizer"] != tokenizer:
        raise ValueError(f"{what} {path} was trained with the {blob['tokenizer']!r} tokenizer, "
                         f"the model uses {tokenizer!r}")
    if base_fingerprint and blob.get("base_fingerprint") and blob["base_fingerprint"] != base_fingerprint:
        raise ValueError(f"{what} {path} was trained on another base model (weights {blob['base_fingerprint']}, "
                         f"this one {base_fingerprint}): load the checkpoint it was trained with")


def _need(blob: dict, keys, path: str, what: str):
    missing = [k for k in keys if k not in blob]
    if missing:
        raise ValueError(f"{what} {path} lacks {', '.join(map(repr, missing))}: it was not written by this "
                         "version of prefixgpt, or it is damaged")


# ----------------------------------------------------------------------------------------------
# Pretraining checkpoints (train.py writes them; every other script reads them).

def save_checkpoint(path: str, model: GPT, tokenizer: str, **fields):
    """Write model weights, config and tokenizer, plus what resuming needs (fields: optimizer state,
    train_config, iter_num, best_val_loss, val_loss, rng). Refuses weights that are not all finite."""
    state = model.state_dict()
    bad = non_finite(state)
    if bad:
        raise NonFiniteWeights(f"not saving {path}: the weights hold NaN or inf ({bad[0]}{' …' * (len(bad) > 1)}); "
                               "the last good checkpoint is kept")
    save_torch({"format": CHECKPOINT_FORMAT, "model": state, "model_config": vars(model.config).copy(),
                "tokenizer": tokenizer, "weights_sha256": state_checksum(state), **fields}, path)


def load_checkpoint(path: str, need_resume: bool = False) -> dict:
    """A checkpoint dict whose format, keys, model config, weights and checksum have all been checked."""
    blob = _checked_blob(path, need_resume)
    with torch.device("meta"):   # the expected names and shapes, without allocating a model
        model = GPT(GPTConfig(**blob["model_config"]))
    _check_weights(blob, path, model)
    return blob


def _checked_blob(path: str, need_resume: bool) -> dict:
    """The file's format, its keys and its model config, checked; the weights are not looked at yet."""
    blob = safe_torch_load(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a prefixgpt checkpoint (format {CHECKPOINT_FORMAT}); make one with train.py")
    _need(blob, CHECKPOINT_KEYS + (RESUME_KEYS if need_resume else ()), path, "checkpoint")
    known = set(GPTConfig.__dataclass_fields__)
    unknown = set(blob["model_config"]) - known
    if unknown:
        raise ValueError(f"checkpoint {path} has model settings this version does not know: {sorted(unknown)}")
    GPTConfig(**blob["model_config"])   # its own range checks
    return blob


def _check_weights(blob: dict, path: str, model: GPT):
    """The checkpoint's tensors: the names and shapes of `model` (built from its config), the checksum
    saved beside them, and finite values."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = blob["model"]
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    for problem, names in (("lacks the tensors", missing), ("has unexpected tensors", extra),
                           ("has tensors of the wrong shape", wrong)):
        if names:
            raise ValueError(f"checkpoint {path} {problem} {', '.join(names[:3])}{' …' * (len(names) > 3)}: "
                             "it does not match its own model_config")
    if "weights_sha256" in blob and state_checksum(state) != blob["weights_sha256"]:
        raise ValueError(f"checkpoint {path} is damaged: its weights do not match the checksum saved with them")
    bad = non_finite(state)
    if bad:
        raise NonFiniteWeights(f"checkpoint {path} holds NaN or inf weights ({bad[0]}): it cannot be used")


def load_model(path: str, device="cpu"):
    """A base model, from a checkpoint written by train.py or from GPT-2's weights (a name such as
    gpt2-medium, or a Hugging Face folder). Returns (model in eval mode, checkpoint dict); for GPT-2 the
    dict holds what a checkpoint would: its model_config and the gpt2 tokenizer."""
    if is_gpt2_base(path):
        model = load_gpt2(path)
        return model.to(device).eval(), {"model_config": vars(model.config).copy(), "tokenizer": "gpt2",
                                         "source": path}
    # the model that will hold the weights is also what they are checked against: a second one built on
    # the meta device would run its random init there, which imports torch._dynamo (~2 s a process)
    ckpt = _checked_blob(path, need_resume=False)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    _check_weights(ckpt, path, model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


# ----------------------------------------------------------------------------------------------
# Prefix files (finetune_prefix.py writes them; evaluate.py and sample.py read them). A few KB.

def save_prefix(path: str, prefix, tokenizer: str, base_fingerprint: str | None = None,
                metrics: dict | None = None):
    """Save the prefix's tensors and what it needs to fit a model: dimensions, P, method, tokenizer, the
    base's fingerprint, and the metrics it reached. Pass prefix.fold() to keep only P (what tuning saves)."""
    state = {k: v.detach().cpu() for k, v in prefix.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise NonFiniteWeights(f"not saving {path}: the prefix holds NaN or inf; the best prefix so far is kept")
    c = prefix.config
    save_torch({
        "format": PREFIX_FORMAT,
        "method": method_of(prefix),
        "n_prefix": prefix.n_prefix,
        "reparam_hidden": getattr(prefix, "reparam_hidden", 0),
        "model": {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                  "vocab_size": c.vocab_size, "block_size": c.block_size},
        "tokenizer": tokenizer,
        "base_fingerprint": base_fingerprint,
        "metrics": metrics or {},
        "state": state,
    }, path)


def check_peft_folder(path: str, tokenizer: str | None, ours: str):
    """A folder given where a file of ours (`ours`) or a PEFT adapter folder goes: it must hold PEFT's
    config, and PEFT adapters run on a GPT-2 base (GPT-2's tokenizer)."""
    if not os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        raise ValueError(f"{path} is a folder without {ADAPTER_CONFIG}: give {ours} or a PEFT adapter folder")
    if tokenizer not in (None, "gpt2"):
        raise ValueError(f"{path} is a PEFT adapter, made for a GPT-2 base, but this base uses the "
                         f"{tokenizer!r} tokenizer: pass a GPT-2 name or folder as --base")


def load_prefix(path: str, model: GPT, tokenizer: str | None = None, base_fingerprint: str | None = None):
    """Load a prefix saved by save_prefix and check that it fits `model` (and tokenizer / base weights
    when given), or a PEFT prefix-tuning or prompt-tuning folder (peft_io.load_peft), which runs on a
    GPT-2 base. Returns (prefix module, the saved dict's metadata)."""
    if os.path.isdir(path):
        check_peft_folder(path, tokenizer, "a prefix file (prefix.pt)")
        prefix = load_peft(path, model)
        return prefix, {"method": method_of(prefix), "n_prefix": prefix.n_prefix, "source": "peft"}
    blob = safe_torch_load(path, "prefix file")
    if not isinstance(blob, dict) or blob.get("format") != PREFIX_FORMAT:
        hint = " (that is a model checkpoint: pass it as --base)" if (
            isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT) else ""
        raise ValueError(f"{path} is not a prefixgpt prefix file (format {PREFIX_FORMAT}){hint}")
    _need(blob, PREFIX_KEYS, path, "prefix file")
    _check_fits(blob, path, "prefix", model, tokenizer, base_fingerprint)
    if blob["method"] not in PREFIX_METHODS:
        raise ValueError(f"prefix {path} has method {blob['method']!r}, not one of {', '.join(PREFIX_METHODS)}")
    prefix = build_prefix(blob["method"], model.config, blob["n_prefix"], blob.get("reparam_hidden") or 512)
    expected = prefix.state_dict()
    state = blob["state"]
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in expected):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise ValueError(f"prefix {path} holds tensors {shapes}, but a {blob['method']} prefix of "
                         f"n_prefix={blob['n_prefix']} needs {({k: tuple(v.shape) for k, v in expected.items()})}")
    if non_finite(state):
        raise NonFiniteWeights(f"prefix {path} holds NaN or inf values: it cannot be used")
    prefix.load_state_dict(state)
    return prefix, {k: v for k, v in blob.items() if k != "state"}


# ----------------------------------------------------------------------------------------------
# Delta files (LoRA, adapters, BitFit): the tensors that trained, and how to attach them to a base.

def save_delta(path: str, model: GPT, method: str, settings: dict, tokenizer: str,
               base_fingerprint: str | None = None, metrics: dict | None = None):
    """Only what trained (methods.delta_state), with the method's settings and the base's fingerprint."""
    state = delta_state(model)
    if non_finite(state):
        raise NonFiniteWeights(f"not saving {path}: the trained tensors hold NaN or inf; the best so far is kept")
    c = model.config
    save_torch({"format": DELTA_FORMAT, "method": method, "settings": settings, "tokenizer": tokenizer,
                "model": {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "vocab_size": c.vocab_size},
                "base_fingerprint": base_fingerprint, "metrics": metrics or {}, "state": state}, path)


def load_delta(path: str, model: GPT, tokenizer: str | None = None, base_fingerprint: str | None = None):
    """Attach a delta file's method to `model` (in place) and load its tensors; the same checks as a prefix
    file: dimensions, tokenizer, base fingerprint, every tensor present. A PEFT LoRA folder is taken too.
    Returns (model, metadata)."""
    if os.path.isdir(path):   # a PEFT LoRA folder (peft_io.load_peft_lora), for a GPT-2 base
        check_peft_folder(path, tokenizer, "a delta file (delta.pt)")
        return load_peft_lora(path, model)
    blob = safe_torch_load(path, "delta file")
    if not isinstance(blob, dict) or blob.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path} is not a prefixgpt delta file (format {DELTA_FORMAT})")
    _need(blob, ("method", "settings", "model", "tokenizer", "state"), path, "delta file")
    _check_fits(blob, path, "delta", model, tokenizer, base_fingerprint)
    attach(blob["method"], model, **blob["settings"])
    expected = {name: p for name, p in model.named_parameters() if p.requires_grad}
    state = blob["state"]
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in expected):
        missing = sorted(set(expected) - set(state)) or sorted(set(state) - set(expected)) or ["(shapes differ)"]
        raise ValueError(f"delta {path} does not fit its {blob['method']} settings: {missing[0]} …")
    if non_finite(state):
        raise NonFiniteWeights(f"delta {path} holds NaN or inf values: it cannot be used")
    with torch.no_grad():
        for name, p in expected.items():
            p.copy_(state[name])
    return model.eval(), {k: v for k, v in blob.items() if k != "state"}


def load_prefixes(paths: list[str], model: GPT, tokenizer: str, with_base: bool = False):
    """Several prefix files for one base model, each checked against it by load_prefix, and labels
    that tell them apart. Returns (prefixes, labels); None stands for the base without a prefix,
    labelled "no prefix", and comes first when with_base is set or no path is given."""
    prefixes, labels = ([None], ["no prefix"]) if with_base or not paths else ([], [])
    fingerprint = weights_fingerprint(model) if paths else None
    device = next(model.parameters()).device
    for path, label in zip(paths, short_labels(paths)):
        prefix, _ = load_prefix(path, model, tokenizer=tokenizer, base_fingerprint=fingerprint)
        prefixes.append(prefix.to(device).eval())
        labels.append(label)
    return prefixes, labels


def short_labels(paths: list[str]) -> list[str]:
    """The file names, or as many trailing folders as it takes to tell them apart
    (out/a/prefix.pt and out/b/prefix.pt become a/prefix.pt and b/prefix.pt)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    for n in range(1, max((len(q) for q in parts), default=1) + 1):
        labels = ["/".join(q[-n:]) for q in parts]
        if len(set(labels)) == len(labels):
            return labels
    return paths


def is_saved_model_file(path: str) -> bool:
    """True when path holds a checkpoint or a prefix file: files no output may overwrite."""
    if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return True   # a torch file we cannot read: still not ours to overwrite
    return isinstance(blob, dict) and blob.get("format") in (CHECKPOINT_FORMAT, PREFIX_FORMAT, DELTA_FORMAT)
