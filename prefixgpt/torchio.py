"""
torchio.py — reading and writing torch files safely: an atomic torch.save, and a torch.load that never runs
pickled code and says in one line what is wrong with a file it cannot read. Every format of the project
(checkpoint.py, gpt2.py's pytorch_model.bin, peft_io.py) reads through safe_torch_load.
"""
import os
import pickle
import re
import zipfile

import torch

from data.files import atomic_write



def save_torch(obj, path: str):
    """torch.save through the project's one atomic write: the old file survives any failure."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str, what: str = "file"):
    """torch.load that never runs pickled code, with one-line errors that say what is wrong."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a directory: give the path of the file itself")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):   # torch.save has written zip archives since PyTorch 1.6
        with open(path, "rb") as f:
            damaged_zip = f.read(4) == b"PK\x03\x04"
        raise ValueError(f"cannot read {what} {path}: it is a corrupt zip archive (truncated?)" if damaged_zip
                         else f"{path} is not a {what}: it is not a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        thing = f" ({found.group(1)})" if found else ""
        raise ValueError(f"refusing to load {path}: besides tensors and plain data it holds pickled Python "
                         f"objects{thing}, and loading those could run code") from None
    except Exception as e:  # a zip whose members are truncated or overwritten
        raise ValueError(f"cannot read {what} {path}: it is damaged (truncated or corrupted; "
                         f"{type(e).__name__})") from None
