"""
gpt2.py — OpenAI's GPT-2 weights in this project's GPT: read Hugging Face's files, fetch them once.

    model = load_gpt2("gpt2")            # or gpt2-medium, gpt2-large, gpt2-xl: downloaded once
    model = load_gpt2("path/to/folder")  # config.json + model.safetensors (or pytorch_model.bin)

What it takes to run GPT-2's weights here, and nothing else:
  * a safetensors reader and writer, short enough to read (the format is 8 bytes of header length,
    a JSON header, then raw little-endian tensor bytes); the `safetensors` package is used by the
    tests only, as an independent check;
  * a download of two files over plain HTTPS into a cache folder, atomically, so that a second run
    needs no network;
  * the mapping from Hugging Face's GPT-2 to GPTConfig and GPT's parameter names. The names already
    match; what differs is that GPT-2's Conv1D layers store their weights as (in, out), the transpose
    of nn.Linear's (out, in), and that GPT-2 uses the tanh approximation of GELU.

It knows nothing about prefixes, tokenizers or training; GPT knows nothing about files.
"""
import http.client
import json
import math
import os
import re
import struct
import sys
import urllib.request

import torch

from data.files import atomic_write, read_json
from model import GPT, GPTConfig
from prefixgpt.torchio import safe_torch_load

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_ENDPOINT = "https://huggingface.co"            # PREFIXGPT_HF_ENDPOINT overrides it (tests use 127.0.0.1)
HF_CACHE = os.path.join("~", ".cache", "prefixgpt", "hf")   # PREFIXGPT_HF_CACHE or cache_dir override it
HF_FILES = ("config.json", "model.safetensors")   # what a download fetches, config first

# ----------------------------------------------------------------------------------------------
# safetensors: [8 bytes: header length n, little-endian] [n bytes: JSON header] [tensor bytes]
# The header maps each name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets counted from
# the first byte after the header; an optional "__metadata__" entry holds free-form strings.

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024   # a real header is kilobytes; anything near this is a damaged length field


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor in a .safetensors file, by name, on the CPU. One-line ValueError naming the file
    when it is truncated, damaged, or not safetensors at all."""
    if sys.byteorder != "little":  # the file's bytes are little-endian, and frombuffer reads native order
        raise ValueError("read_safetensors needs a little-endian machine")
    if not os.path.isfile(path):
        raise ValueError(f"safetensors file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated or not a safetensors file: {size} bytes, "
                             "not even the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise ValueError(f"{path} is truncated or not a safetensors file: header length {n} "
                             f"does not fit in its {size} bytes")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
        header.pop("__metadata__", None)

        entries = []   # (begin, end, dtype, shape, name)
        for name, info in header.items():
            entries.append((*_check_entry(path, name, info), name))
        entries.sort(key=lambda e: (e[0], e[1]))
        data_size, expect = size - 8 - n, 0
        for begin, end, _, _, name in entries:
            if begin != expect:   # what the format asks: the tensors tile the data, no gaps, no overlaps
                raise ValueError(f"{path}: tensor {name!r} starts at byte {begin} of the data, expected "
                                 f"{expect}: offsets must be contiguous")
            expect = end
        if expect > data_size:
            raise ValueError(f"{path} is truncated: its header promises {expect} bytes of tensor data, "
                             f"the file holds {data_size}")
        if expect < data_size:
            raise ValueError(f"{path} is not a valid safetensors file: {data_size - expect} bytes follow "
                             "the last tensor")

        tensors = {}
        for begin, end, dtype, shape, name in entries:   # in file order, so reading is sequential
            buf = bytearray(end - begin)                  # writable memory: torch shares it, no copy
            f.readinto(buf)
            flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(shape)
    return tensors


def _check_entry(path, name, info):
    """(begin, end, dtype, shape) of one header entry, or a ValueError that names it."""
    if not (isinstance(info, dict) and info.get("dtype") in DTYPES and isinstance(info.get("shape"), list)
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2):
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {str(info)[:80]} "
                         f"(dtypes this reader knows: {', '.join(DTYPES)})")
    shape, (begin, end) = info["shape"], info["data_offsets"]
    if not all(isinstance(d, int) and d >= 0 for d in [*shape, begin, end]) or end < begin:
        raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape} or offsets {[begin, end]}")
    dtype = DTYPES[info["dtype"]]
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if end - begin != nbytes:
        raise ValueError(f"{path}: tensor {name!r} of {info['dtype']} {shape} needs {nbytes} bytes, "
                         f"its offsets span {end - begin}")
    return begin, end, dtype, shape


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """Write tensors (names → CPU or GPU tensors) as a .safetensors file, atomically (tmp, then rename).
    metadata: optional string → string pairs, stored under "__metadata__"."""
    header, blobs, offset = {}, [], 0
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"cannot write tensor {name!r}: dtype {t.dtype} is not one of {', '.join(DTYPES)}")
        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)   # pad with spaces so the tensor data starts 8-byte aligned

    def fill(f):
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
    atomic_write(path, fill)


# ----------------------------------------------------------------------------------------------
# The Hugging Face hub: two files per model, fetched once into a cache folder.

def is_gpt2_name(spec: str) -> bool:
    """True for the four GPT-2 sizes on the hub (gpt2, gpt2-medium, gpt2-large, gpt2-xl)."""
    return spec in GPT2_NAMES


def is_gpt2_base(spec: str) -> bool:
    """A GPT-2 a --base can name: one of the hub's four sizes, or a local Hugging Face folder (config.json).
    load_model reads these with load_gpt2, everything else as a train.py checkpoint."""
    return bool(spec) and (is_gpt2_name(spec) or os.path.isfile(os.path.join(spec, "config.json")))


def hf_cache_dir(name: str, cache_dir: str | None = None) -> str:
    """Where a downloaded model lives: cache_dir, else $PREFIXGPT_HF_CACHE, else ~/.cache/prefixgpt/hf;
    then the model's name."""
    root = cache_dir or os.environ.get("PREFIXGPT_HF_CACHE") or os.path.expanduser(HF_CACHE)
    return os.path.join(root, name)


def hf_download(name: str, cache_dir: str | None = None, timeout: float = 60.0) -> str:
    """Fetch a GPT-2's config.json and model.safetensors unless they are cached; return the folder.

    A file is written to file.tmp and renamed only once complete, so the cache never holds half a
    file, and a file already there is never fetched again (a second call needs no network).
    """
    if not is_gpt2_name(name):
        raise ValueError(f"{name!r} is not a GPT-2 on the hub: choose one of {', '.join(GPT2_NAMES)}")
    folder = hf_cache_dir(name, cache_dir)
    endpoint = (os.environ.get("PREFIXGPT_HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    for file in HF_FILES:
        path = os.path.join(folder, file)
        if os.path.exists(path):
            continue
        url = f"{endpoint}/{name}/resolve/main/{file}"
        try:
            _fetch(url, path, f"{name}/{file}", timeout)
        except (OSError, http.client.HTTPException) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OSError(f"cannot download {url} ({reason}): without the network, pass a local folder "
                          f"instead of {name!r}, one holding config.json and model.safetensors (as "
                          "transformers' save_pretrained writes them)") from None
    return folder


def _fetch(url: str, path: str, label: str, timeout: float):
    """Stream url into path through the project's atomic write, showing a one-line percentage on stderr."""
    shown = None

    def fill(f):
        nonlocal shown
        with urllib.request.urlopen(url, timeout=timeout) as r:
            total = int(r.headers.get("Content-Length") or 0)
            done = 0
            while chunk := r.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                now = f"{100 * done // total}% of {total / 1e6:.1f} MB" if total else f"{done // 10**6} MB"
                if now != shown:   # redraw only when the text changes: a 6 GB file is 6,000 chunks
                    shown = now
                    print(f"\rdownloading {label}: {now}", end="", file=sys.stderr, flush=True)
        if total and done != total:
            raise OSError(f"the connection closed after {done} of {total} bytes")
    try:
        atomic_write(path, fill)
    finally:
        if shown is not None:
            print(file=sys.stderr)   # end the progress line, so whatever follows starts on its own


# ----------------------------------------------------------------------------------------------
# A Hugging Face GPT-2 folder → GPT.

# GPT-2's Conv1D computes x @ W + b with W of shape (in, out); nn.Linear computes x @ W.T + b with W
# of shape (out, in). Same numbers, transposed.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 files carry that are not parameters: the causal mask and the value masked out.
KNOWN_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
GELU_OF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}


def gpt2_config(folder: str) -> GPTConfig:
    """GPTConfig from a Hugging Face GPT-2 config.json; ValueError for another architecture, or for a
    GPT-2 variant whose arithmetic this GPT does not have."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no config.json: not a Hugging Face model folder")
    hf = read_json(path)
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "gpt2" and "GPT2LMHeadModel" not in archs:
        raise ValueError(f"{path} describes a {hf.get('model_type')!r} model ({', '.join(archs) or 'no architectures'}), "
                         "not GPT-2: only GPT-2 checkpoints load")
    missing = [k for k in ("n_positions", "n_embd", "n_layer", "n_head", "vocab_size") if not isinstance(hf.get(k), int)]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_OF:
        raise ValueError(f"{path}: activation_function {act!r} is not one this GPT has ({', '.join(GELU_OF)})")
    # variants that change the arithmetic; GPT-2's own checkpoints have none of them
    n_inner = hf.get("n_inner")
    for key, ok in (("n_inner", n_inner in (None, 4 * hf["n_embd"])),
                    ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5) == 1e-5),
                    ("scale_attn_weights", hf.get("scale_attn_weights", True) is True),
                    ("scale_attn_by_inverse_layer_idx", hf.get("scale_attn_by_inverse_layer_idx", False) is False),
                    ("tie_word_embeddings", hf.get("tie_word_embeddings", True) is True)):
        if not ok:
            raise ValueError(f"{path}: {key}={hf.get(key)!r} is a GPT-2 variant this GPT does not implement")
    return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True, gelu=GELU_OF[act])


def read_hf_weights(folder: str) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors by name, the file they came from): model.safetensors, else pytorch_model.bin."""
    st, pt = os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(st):
        return read_safetensors(st), st
    if os.path.isfile(pt):
        state = safe_torch_load(pt, "GPT-2 weights")   # weights_only: a .bin is a pickle, and may not run code
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{pt} is not a state dict of tensors")
        return state, pt
    if os.path.isfile(st + ".index.json") or os.path.isfile(pt + ".index.json"):
        raise ValueError(f"{folder} holds a checkpoint split into shards, which this loader does not read")
    raise ValueError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def gpt2_state_dict(hf_state: dict[str, torch.Tensor], config: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors → GPT's state_dict (float32, Conv1D weights transposed).

    Every tensor is accounted for: one missing, unexpected or of the wrong shape is a ValueError that
    names it. Keys may or may not start with "transformer." (GPT2LMHeadModel vs GPT2Model files).
    """
    with torch.device("meta"):   # shapes only: no memory, no random init
        want = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items() if k != "lm_head.weight"}
    out, lm_head = {}, None
    for key, t in hf_state.items():
        name = key.removeprefix("transformer.")
        if KNOWN_BUFFERS.fullmatch(name):
            continue
        if name == "lm_head.weight":
            lm_head = t
            continue
        ours = "transformer." + name
        if ours not in want:
            raise ValueError(f"{source} holds an unexpected tensor {key!r}: not a parameter of a GPT-2 with "
                             f"n_layer={config.n_layer}")
        conv1d = name.endswith(CONV1D_WEIGHTS)
        expected = want[ours][::-1] if conv1d else want[ours]
        if tuple(t.shape) != expected:
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(t.shape)}, but config.json implies "
                             f"{expected}")
        if not t.is_floating_point():
            raise ValueError(f"{source}: tensor {key!r} is {t.dtype}, not a floating-point weight")
        out[ours] = (t.t() if conv1d else t).float().contiguous()
    missing = [k.removeprefix("transformer.") for k in want if k not in out]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{source} lacks tensor {missing[0]!r}{more}")
    if lm_head is not None and not torch.equal(lm_head.float(), out["transformer.wte.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from wte.weight; this GPT ties them, as GPT-2 does")
    return out


def load_gpt2(name_or_dir: str, cache_dir: str | None = None) -> GPT:
    """A GPT holding GPT-2's weights, in eval mode, on the CPU, in float32.

    name_or_dir: an existing folder in Hugging Face's layout (read as it is, no network), or one of
    gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded into the cache once; see hf_download).
    """
    if os.path.isdir(name_or_dir):
        folder = name_or_dir
    elif is_gpt2_name(name_or_dir):
        folder = hf_download(name_or_dir, cache_dir)
    else:
        raise ValueError(f"{name_or_dir!r} is neither a folder nor a GPT-2 name ({', '.join(GPT2_NAMES)})")
    config = gpt2_config(folder)
    hf_state, source = read_hf_weights(folder)
    state = gpt2_state_dict(hf_state, config, source)
    with torch.device("meta"):
        model = GPT(config)   # its random init would be overwritten at once: skip it (and its memory)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    # assign=True gave lm_head and wte two Parameter objects; tie them back into one, as GPT.__init__ does
    model.lm_head.weight = model.transformer.wte.weight
    return model.eval()
