"""
data/bins.py — read a corpus written by data/shakespeare/prepare.py: meta.json + train.bin / val.bin.

    from data.bins import load_bin
    train, val, meta = load_bin("data/shakespeare")   # 1-D np.uint16 arrays of token ids, and meta.json

Every problem (missing folder or file, damaged meta.json, empty or mismatched .bin) is one line that says
how to remake it.
"""
import json
import os

import numpy as np

PREPARE = "python data/shakespeare/prepare.py"


def read_meta(meta_path: str, remake: str) -> dict:
    """meta.json of a prepared corpus, with the keys the readers need (a ValueError says how to remake it)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # not JSON, or not even UTF-8 (a JSONDecodeError is a ValueError)
        raise ValueError(f"{meta_path} is damaged ({e}): {remake}") from None
    missing = [k for k in ("tokenizer", "vocab_size", "dtype") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks {', '.join(missing)}: {remake}")
    try:
        np.dtype(meta["dtype"])
    except TypeError:
        raise ValueError(f"{meta_path} names an unknown dtype {meta['dtype']!r}: {remake}") from None
    return meta


def load_bin(data_dir: str):
    """Returns (train, val, meta): train/val are 1-D arrays of token ids, dtype meta["dtype"] (uint16 for
    our tokenizers). A split under 256 MB is read into memory (Tiny Shakespeare is ~2 MB), so batches
    never touch the disk; a larger one is memory-mapped, so a big corpus needs no RAM of its size."""
    remake = f"make it with `{PREPARE} --out_dir {data_dir}`"
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: {remake}")
    meta = read_meta(meta_path, remake)
    splits = []
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, not a file of token ids: move it away and {remake}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {remake}")
        if os.path.getsize(path) == 0:   # (np.memmap refuses an empty file with a cryptic error)
            raise ValueError(f"{path} is empty: {remake} from a non-empty text")
        ids = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        # a .bin left from another run (other tokenizer or text) would silently train on garbage
        expected = meta.get(f"{split}_tokens", len(ids))
        if len(ids) != expected:
            raise ValueError(f"{path} holds {len(ids)} tokens but meta.json says {expected}: {remake}")
        splits.append(np.array(ids) if ids.nbytes < 2**28 else ids)
    return splits[0], splits[1], meta
