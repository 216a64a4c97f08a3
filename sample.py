"""
sample.py — generate text from a checkpoint, optionally steered by one or more prefixes.

    python sample.py --base=out/shakespeare_baby/best.pt --prompt="ROMEO:" --num_samples=2
    python sample.py --base=out/main/base.pt --prefix=out/main/e2e_prefix.pt,other.pt --with_base
    python sample.py --base=out/demo/base/best.pt --requests=out/demo/requests.jsonl --temperature=0
    python sample.py --help

Decoding uses the KV cache, which starts from the prefix (a prefix *is* a learned KV cache). With
several prefixes every (prefix, sample) pair is a row of one mixed batch; each sample is labelled.
--requests serves many tasks at once, as one frozen model would: a JSONL file whose every line is
{"prefix": "path/to/prefix.pt" or "" for the base alone, "prompt": "..."}; all the lines are decoded
together in one mixed batch, each row with its own prefix and its own prompt.
"""
import os
from dataclasses import dataclass

import torch

from data.tasks import read_jsonl
from data.tokenizer import get_tokenizer
from model import prefix_length, room_after
from prefix import batch_prefixes
from prefixgpt.checkpoint import load_model, load_prefixes
from prefixgpt.cli import main_guard, parse, setting
from prefixgpt.decoding import cast_for_inference, generate
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, setup_runtime
from prefixgpt.scoring import cut_at_stop, decode_rows


@dataclass
class SampleConfig:
    base: str = "out/shakespeare_baby/best.pt"   # a train.py checkpoint, a GPT-2 name or a HF folder
    prefix: list[str] = setting([])   # prefix files, comma-separated
    with_base: bool = False        # also sample the frozen base without any prefix, in the same batch
    prompt: str = "\n"             # text, or FILE:path to read it from a file
    requests: str = ""             # a JSONL of {"prefix", "prompt"} rows: each its own task, one batch
    num_samples: int = setting(2, min=1)
    max_new_tokens: int = setting(200, min=1)
    temperature: float = setting(0.8, min=0.0)   # 0 = greedy; higher = more random
    top_k: int | None = setting(200, min=1)      # sample among the k likeliest tokens; none = all
    seed: int = 1337
    stop_at_eot: bool = False      # stop a sample at the tokenizer's end marker ("\n" for bytes)
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("float32", choices=DTYPES)


def read_prompt(prompt: str) -> str:
    """The prompt text, or with FILE:path the UTF-8 text of that file (one-line errors otherwise)."""
    if not prompt.startswith("FILE:"):
        return prompt
    path = prompt[5:]
    if os.path.isdir(path):
        raise ValueError(f"--prompt=FILE:{path} is a directory: give a text file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompt=FILE:{path} is not UTF-8 text (byte {e.start})") from None


def generate_samples(model, tokenizer, prompt: str, prefixes: list, labels: list[str], num_samples: int,
                     max_new_tokens: int, temperature: float, top_k, stop_at_eot=False):
    """One batch: rows = every prefix (None = no prefix) × num_samples. Returns [(label, text)]."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: pass --prompt=... (the byte tokenizer accepts '\\n')")
    rows = [i for i in range(len(prefixes)) for _ in range(num_samples)]
    idx = torch.tensor([ids] * len(rows), dtype=torch.long, device=device)
    prefix_kv = prefix_mask = None
    if any(p is not None for p in prefixes):
        with torch.no_grad():
            kvs = [None if p is None else p(model) for p in prefixes]
        prefix_kv, prefix_mask = batch_prefixes(kvs, rows)
    stop = tokenizer.eot_token if stop_at_eot else None
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                   prefix_kv=prefix_kv, prefix_mask=prefix_mask, stop_token=stop)
    results = []
    for row, i in enumerate(rows):
        new = cut_at_stop(out[row, len(ids):].tolist(), stop)
        results.append((labels[i], tokenizer.decode(new)))
    return results


def serve_requests(model, tokenizer, path: str, max_new_tokens: int, temperature: float, top_k,
                   stop_at_eot=False, dtype="float32"):
    """Every line of a requests JSONL ({"prefix": file or "", "prompt": text}) as one row of one mixed
    batch: each row its own prefix (loaded once per file, checked against the base) and its own prompt.
    Returns [(label, prompt, text)] in the file's order."""
    rows = read_jsonl(path, need=("prefix", "prompt"))
    paths = list(dict.fromkeys(r["prefix"] for r in rows if r["prefix"]))
    prefixes, labels = load_prefixes(paths, model, tokenizer.name, with_base=True)
    model = cast_for_inference(model, dtype)     # after the prefixes were checked against the base's weights
    index = {p: i + 1 for i, p in enumerate(paths)}     # 0: the base alone
    with torch.no_grad():
        kvs = [None if p is None else p(model) for p in prefixes]
    batch = []
    for r in rows:
        i, ids = index.get(r["prefix"], 0), tokenizer.encode(r["prompt"])
        P = prefix_length(kvs[i])
        if not ids or len(ids) >= room_after(P, model.config.block_size):
            raise ValueError(f"{path}:{r['_line']}: the prompt is {len(ids)} tokens; it needs at least one and "
                             f"room to answer in block_size {model.config.block_size} after a prefix of {P}")
        batch.append((kvs[i], ids))
    stop = tokenizer.eot_token if stop_at_eot else None
    out = decode_rows(model, batch, max_new_tokens, stop, temperature, top_k)
    results = []
    for r, new in zip(rows, out):
        results.append((labels[index.get(r["prefix"], 0)], r["prompt"], tokenizer.decode(cut_at_stop(new, stop))))
    return results


def main(argv):
    cfg = SampleConfig()
    seen = parse(argv, cfg, prog="sample.py", description=__doc__.split("\n\n")[0])
    if cfg.requests and seen & {"prefix", "prompt", "with_base", "num_samples"}:
        raise ValueError("--requests names each row's prefix and prompt: drop --prefix, --prompt, --with_base "
                         "and --num_samples, or drop --requests")
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, ckpt = load_model(cfg.base, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    if cfg.requests:
        with rt.autocast:
            served = serve_requests(model, tokenizer, cfg.requests, cfg.max_new_tokens, cfg.temperature,
                                    cfg.top_k, cfg.stop_at_eot, rt.dtype)
        for label, prompt, text in served:
            print(f"--- [{label}] ---")
            print(prompt + text)
        return
    prefixes, labels = load_prefixes(cfg.prefix, model, tokenizer.name, cfg.with_base)
    model = cast_for_inference(model, rt.dtype)   # bf16/fp16: every weight cast once, not at every step
    prompt = read_prompt(cfg.prompt)
    with rt.autocast:
        samples = generate_samples(model, tokenizer, prompt, prefixes, labels, cfg.num_samples,
                                   cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.stop_at_eot)
    for label, text in samples:
        print(f"--- [{label}] ---")
        print(prompt + text)


if __name__ == "__main__":
    main_guard(main)
