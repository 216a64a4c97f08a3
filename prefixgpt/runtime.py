"""
runtime.py — where and how the scripts compute: one device-and-precision setup, and stopping on a signal.

    rt = setup_runtime("auto", "auto", seed=1337)   # resolves the device, seeds, sets precision flags
    with rt.autocast:                               # bf16 / fp16 autocast, or nothing
        logits, loss = model(x, y)
    rt.scaler.scale(loss).backward()                # fp16 needs a gradient scaler; otherwise a no-op

    with StopOnSignal() as stop:                    # Ctrl-C / SIGTERM set stop.signal instead of killing
        while ... and not stop.signal: ...

Every script (train, finetune_prefix, evaluate, sample) resolves --device and --dtype here and nowhere
else, so a device name that does not exist is one line that names the devices that do, and a GPU gets
the same precision settings in every script. This module knows nothing about models or data.
"""
import contextlib
import re
import signal
from dataclasses import dataclass

import torch

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"          # what --device accepts (checked where it is parsed)
DTYPES = ("auto", "float32", "bfloat16", "float16")   # what --dtype accepts


def available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str) -> str:
    """'auto' → cuda, then mps, then cpu. A named device must exist: ValueError listing those that do."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r} "
                         f"(this machine has: {', '.join(available_devices())})")
    have = available_devices()
    if name == "auto":
        return "cuda" if "cuda" in have else ("mps" if "mps" in have else "cpu")
    if name not in have:
        raise ValueError(f"--device={name} is not available on this machine; it has: {', '.join(have)} "
                         "(or use --device=auto)")
    return name


def native_bf16(device: str) -> bool:
    """bfloat16 in hardware. Emulated bf16 (V100, T4) is slower than fp32 and loses the fused attention
    kernels, so it does not count."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device == "cpu"   # CPU autocast runs bf16 kernels (slow on old CPUs, but real)


def resolve_dtype(device: str, dtype: str) -> str:
    """The precision actually used. auto: bf16 on a CUDA card that has it natively, else fp32 (on a card
    without native bf16, ask for float16 explicitly: it trains with a gradient scaler)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kind = device.split(":")[0]
    if dtype == "auto":
        return "bfloat16" if kind == "cuda" and native_bf16(device) else "float32"
    if dtype == "bfloat16" and not native_bf16(device):
        raise ValueError(f"--dtype=bfloat16 is not supported natively on {device}: use --dtype=float16 "
                         "(with a gradient scaler) or float32")
    if dtype == "float16" and kind != "cuda":
        raise ValueError(f"--dtype=float16 needs a CUDA device (got {device}): use bfloat16 or float32")
    return dtype


@dataclass
class Runtime:
    device: str          # "cpu", "cuda:0", "mps"
    dtype: str           # "float32" | "bfloat16" | "float16": what autocast computes in
    autocast: contextlib.AbstractContextManager
    scaler: "torch.amp.GradScaler"   # enabled only for float16; a pass-through otherwise

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def setup_runtime(device: str = "auto", dtype: str = "auto", seed: int | None = None) -> Runtime:
    """Resolve device and precision, seed torch, and set the per-device flags every script wants."""
    device = pick_device(device)
    dtype = resolve_dtype(device, dtype)
    if device.startswith("cuda"):
        if ":" in device:
            # without this, RNG states saved and restored and the bf16 check would be GPU 0's
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True   # TF32 matmuls: fp32 range, ~8x the speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    if device == "cpu":
        # Tiny values late in training become denormal floats, which CPUs handle ~100x slower.
        torch.set_flush_denormal(True)
    if seed is not None:
        torch.manual_seed(seed)
    kind = device.split(":")[0]
    ctx = (torch.autocast(kind, dtype=getattr(torch, dtype)) if dtype != "float32"
           else contextlib.nullcontext())
    # only fp16 needs loss scaling (its exponent range is narrow); disabled, the scaler passes through
    scaler = torch.amp.GradScaler("cuda" if dtype == "float16" else "cpu", enabled=(dtype == "float16"))
    return Runtime(device, dtype, ctx, scaler)


class StopOnSignal:
    """Within the block, Ctrl-C (SIGINT) and SIGTERM set .signal instead of interrupting: the loop that
    polls it finishes its step and saves. Leaving the block restores the previous handlers, so a second
    Ctrl-C during the work that follows (a final evaluation) interrupts as usual."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def _handle(self, signum, frame):
        self.signal = signum

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        return False
