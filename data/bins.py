"""
data/bins.py — read a prepared corpus: train.bin / val.bin (flat token ids) and meta.json.
"""
import json
import os

import numpy as np

PREPARE = "python data/shakespeare/prepare.py"


def load_bin(data_dir: str):
    """Returns (train ids, val ids, meta). Small corpora are read into memory; large ones are mapped."""
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: prepare the data first with `{PREPARE} "
                                f"--out_dir {data_dir}`")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    splits = []
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: prepare the data first with `{PREPARE} --out_dir {data_dir}`")
        data = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        if len(data) == 0:
            raise ValueError(f"{path} is empty: rerun `{PREPARE} --out_dir {data_dir}` on a non-empty text")
        # under 256 MB: a plain array avoids re-reading pages from disk at every batch
        splits.append(np.array(data) if data.nbytes < 2**28 else data)
    return splits[0], splits[1], meta
