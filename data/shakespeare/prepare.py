"""
Prepare the pretraining corpus: Tiny Shakespeare (plus optional unlabelled task text) → train.bin, val.bin.

    python data/shakespeare/prepare.py                          # download Tiny Shakespeare (or reuse the cached copy)
    python data/shakespeare/prepare.py --input input.txt        # a local copy (default: $PREFIXGPT_SHAKESPEARE)
    python data/shakespeare/prepare.py --url URL                # a mirror (default: $PREFIXGPT_SHAKESPEARE_URL)
    python data/shakespeare/prepare.py --tokenizer gpt2         # GPT-2 BPE → data/shakespeare_gpt2
    python data/shakespeare/prepare.py --tokenizer gpt2_2048    # GPT-2's first 2048 tokens → data/shakespeare_gpt2_2048
    python data/shakespeare/prepare.py --out_dir data/demo --extra_text data/e2e/train_text.txt
    python -m data.shakespeare.prepare ...                      # the same, as a module

The first 90% of the text is train, the last 10% val (as nanoGPT; --val_fraction changes it).
--extra_text files (repeatable) are appended to train only: they let the base model learn to *read* a
downstream task's training text; no task text ever goes into val.
Where the text comes from: --input if given; else <out_dir>/input.txt if an earlier run downloaded it;
else --url (default: Tiny Shakespeare's official URL), then cached there; else, offline, the Python
documentation that ships with CPython (pydoc_data.topics), with a one-line notice, so the rest of the
pipeline still runs.
Default --out_dir: data/shakespeare for the byte tokenizer, data/shakespeare_<tokenizer> for the others,
so two tokenizers never overwrite each other. Writes train.bin / val.bin (token ids, uint16) and meta.json, each atomically.
"""
import http.client
import os
import sys

import numpy as np

# run as a script, Python puts data/shakespeare/ on sys.path, not the repo root that holds data/
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.checks import Parser, count, decode_utf8, fraction, tokenizer_name, url  # noqa: E402
from data.drills import copy_drills  # noqa: E402
from data.files import download_once, write_atomic, write_json  # noqa: E402
from data.tokenizer import get_tokenizer, token_dtype  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def fallback_corpus() -> str:
    """Text that is on every machine with Python: CPython's help topics (pydoc_data.topics, ~0.7 MB
    of English prose and code). Sorted keys, so the corpus is the same on every run."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path: str, flag: str = "--input") -> str:
    if os.path.isdir(path):
        raise SystemExit(f"error: {flag} {path} is a folder; pass a text file")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {flag} file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode_utf8(data, path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def read_source(path: str | None, out_dir: str, url: str = URL) -> tuple[str, str]:
    """(text, where it came from): a local file, the cached or downloaded URL, or the offline fallback."""
    if path:
        return read_text(path), path
    cached = os.path.join(out_dir, "input.txt")
    if os.path.isfile(cached):
        return read_text(cached), cached
    try:
        download_once(url, cached, timeout=10)  # cached in out_dir: only the real corpus, never the fallback
    except (OSError, http.client.HTTPException) as e:  # no network, HTTP error, cut download
        print(f"could not download {url} ({e}) and no --input: using CPython's documentation (pydoc_data.topics) "
              "as the corpus; for Tiny Shakespeare pass --input FILE (or set PREFIXGPT_SHAKESPEARE) or another --url",
              file=sys.stderr)
        return fallback_corpus(), "pydoc_data.topics"
    return read_text(cached), url


def write_ids(path: str, ids: list[int], dtype):
    """Token ids as one raw array of `dtype` (no header, native byte order), as data/bins.py maps it back."""
    write_atomic(path, np.asarray(ids, dtype=dtype).tobytes())


def prepare(text: str, tokenizer, out_dir: str, val_fraction: float = 0.1, extra_texts=(),
            source: str = "text", extra_names=(), drills: int = 0) -> dict:
    """Split `text` (first 1-val_fraction train, rest val), append extra_texts (and `drills` copy drills)
    to train, tokenize, write train.bin / val.bin / meta.json into out_dir. Returns the metadata written
    to meta.json."""
    if not text.strip():
        raise ValueError(f"the corpus from {source} is empty: pass a non-empty --input file")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    # split the text, not the tokens, so a split never cuts a UTF-8 character or a BPE token in two
    cut = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    if not train_text.strip() or not val_text.strip():
        raise ValueError(f"the corpus from {source} is too short to split: {len(text)} characters")
    for extra in extra_texts:
        train_text += "\n" + extra  # newline: the extra text starts a line, not the middle of a word
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    bytes_per_token = round(len(train_text.encode("utf-8")) / max(len(train_ids), 1), 3)   # of the text alone
    if drills:   # after the text, as whole lines; val stays the corpus's own text
        train_ids = list(train_ids) + [tokenizer.eot_token] + copy_drills(drills, tokenizer.vocab_size, tokenizer.eot_token)
    dtype = token_dtype(tokenizer.vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    write_ids(os.path.join(out_dir, "train.bin"), train_ids, dtype)
    write_ids(os.path.join(out_dir, "val.bin"), val_ids, dtype)
    meta = {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
            "train_tokens": len(train_ids), "val_tokens": len(val_ids),
            "bytes_per_token": bytes_per_token, "source": source,
            "extra_text": list(extra_names), **({"copy_drills": drills} if drills else {})}
    write_json(os.path.join(out_dir, "meta.json"), meta)  # last: marks "done"
    return meta


def main(argv=None) -> dict:
    ap = Parser(description=__doc__.strip().split("\n\n")[0])
    ap.add_argument("--input", default=os.environ.get("PREFIXGPT_SHAKESPEARE"),
                    help="local UTF-8 text file (default: $PREFIXGPT_SHAKESPEARE, else download)")
    ap.add_argument("--url", type=url, default=os.environ.get("PREFIXGPT_SHAKESPEARE_URL") or URL,
                    help="where to download the text from; default $PREFIXGPT_SHAKESPEARE_URL, else Tiny Shakespeare")
    ap.add_argument("--tokenizer", default="byte", type=tokenizer_name,
                    help="byte (default), gpt2, or gpt2_<K>: GPT-2's first K tokens (e.g. gpt2_2048)")
    ap.add_argument("--out_dir", default=None, help="default data/shakespeare (data/shakespeare_<tokenizer> for the others)")
    ap.add_argument("--extra_text", action="append", default=[], metavar="FILE",
                    help="unlabelled text file appended to train only (repeatable)")
    ap.add_argument("--val_fraction", type=fraction, default=0.1, help="the end of the text kept as val")
    ap.add_argument("--copy_drills", type=count, default=0, metavar="N",
                    help="append N lines of a random token span written twice to train (copy_drills); 0: none")
    args = ap.parse_args(argv)
    out_dir = args.out_dir or ("data/shakespeare" if args.tokenizer == "byte" else f"data/shakespeare_{args.tokenizer}")
    extra_texts = [read_text(p, "--extra_text") for p in args.extra_text]  # every file read before a slow download
    try:
        tokenizer = get_tokenizer(args.tokenizer)
        text, source = read_source(args.input, out_dir, args.url)
        meta = prepare(text, tokenizer, out_dir, args.val_fraction, extra_texts, source, args.extra_text,
                       args.copy_drills)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"{out_dir}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['bytes_per_token']:.2f} bytes a token) from {source}"
          + (f" + {', '.join(args.extra_text)} (train only)" if args.extra_text else "")
          + (f" + {args.copy_drills:,} copy drills (train only)" if args.copy_drills else ""))
    return meta


if __name__ == "__main__":
    main()
