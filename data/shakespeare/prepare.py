"""
Prepare a pretraining corpus: Tiny Shakespeare (plus optional unlabelled task text) → train.bin, val.bin.

    python data/shakespeare/prepare.py                          # download Tiny Shakespeare
    python data/shakespeare/prepare.py --input input.txt        # or a local copy (or PREFIXGPT_SHAKESPEARE)
    python data/shakespeare/prepare.py --tokenizer gpt2 --out_dir data/shakespeare_gpt2
    python data/shakespeare/prepare.py --out_dir data/demo --extra_text data/e2e/train_text.txt

The first 90% of the text is train, the last 10% val (as nanoGPT). --extra_text files go to train only:
they let a base model learn to *read* a downstream task's text, never its validation or test text.
Offline with no local copy, it falls back to the Python documentation that ships with CPython
(pydoc_data.topics) and says so, so the rest of the pipeline still runs.
Writes train.bin / val.bin (uint16 token ids) and meta.json, each atomically.
"""
import argparse
import json
import os
import sys
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.tokenizer import get_tokenizer, token_dtype  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def fallback_corpus() -> str:
    """Text that is always on the machine: the topic help pages inside CPython (about 0.6 MB)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_source(path: str | None, out_dir: str) -> tuple[str, str]:
    """(text, where it came from): a local file, the official URL (cached in out_dir), or the fallback."""
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"error: input file not found: {path}")
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    cached = os.path.join(out_dir, "input.txt")
    if os.path.isfile(cached):
        with open(cached, encoding="utf-8") as f:
            return f.read(), cached
    try:
        with urllib.request.urlopen(URL, timeout=10) as r:
            text = r.read().decode("utf-8")
        os.makedirs(out_dir, exist_ok=True)
        write_text(cached, text)
        return text, URL
    except OSError:
        print("offline and no --input: using CPython's documentation (pydoc_data.topics) as the corpus; "
              "pass --input or set PREFIXGPT_SHAKESPEARE to use Tiny Shakespeare")
        return fallback_corpus(), "pydoc_data.topics"


def write_text(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_ids(path: str, ids, dtype):
    tmp = path + ".tmp"
    np.asarray(ids, dtype=dtype).tofile(tmp)
    os.replace(tmp, path)


def prepare(text: str, tokenizer, out_dir: str, val_fraction=0.1, extra_texts=(), source="text",
            extra_names=()) -> dict:
    """Split, tokenize and write one corpus. Returns its metadata."""
    if not text.strip():
        raise SystemExit("error: the corpus is empty: pass a non-empty --input file")
    cut = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    for extra in extra_texts:
        train_text += "\n" + extra
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    dtype = token_dtype(tokenizer.vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    write_ids(os.path.join(out_dir, "train.bin"), train_ids, dtype)
    write_ids(os.path.join(out_dir, "val.bin"), val_ids, dtype)
    meta = {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
            "train_tokens": len(train_ids), "val_tokens": len(val_ids), "source": source,
            "extra_text": list(extra_names)}
    write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=os.environ.get("PREFIXGPT_SHAKESPEARE"),
                    help="local text file (default: $PREFIXGPT_SHAKESPEARE, else download)")
    ap.add_argument("--tokenizer", default="byte", choices=["byte", "gpt2"])
    ap.add_argument("--out_dir", default=None, help="default data/shakespeare (data/shakespeare_gpt2 for gpt2)")
    ap.add_argument("--extra_text", action="append", default=[], help="text file added to train only (repeatable)")
    ap.add_argument("--val_fraction", type=float, default=0.1)
    args = ap.parse_args(argv)
    out_dir = args.out_dir or ("data/shakespeare" if args.tokenizer == "byte" else "data/shakespeare_gpt2")
    try:
        tokenizer = get_tokenizer(args.tokenizer)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    text, source = read_source(args.input, out_dir)
    extras = []
    for path in args.extra_text:
        if not os.path.isfile(path):
            raise SystemExit(f"error: --extra_text file not found: {path}")
        with open(path, encoding="utf-8") as f:
            extras.append(f.read())
    meta = prepare(text, tokenizer, out_dir, args.val_fraction, extras, source, args.extra_text)
    print(f"{out_dir}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}) from {source}"
          + (f" + {', '.join(args.extra_text)} (train only)" if args.extra_text else ""))
    return meta


if __name__ == "__main__":
    main()
