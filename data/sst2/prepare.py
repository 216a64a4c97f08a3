"""
Prepare SST-2 (GLUE binary sentiment of movie-review sentences) as JSONL.

    python data/sst2/prepare.py                 # download GLUE's SST-2.zip
    python data/sst2/prepare.py --url URL       # from a mirror (default: $PREFIXGPT_SST2_URL, else URL below)
    python data/sst2/prepare.py --dir PATH      # or a folder holding train.tsv and dev.tsv
    PREFIXGPT_SST2=PATH python -m data.sst2.prepare

Splits: train.tsv -> train and a seeded held-out val (--val_size lines); dev.tsv -> test
(GLUE's own test set has no labels). Writes to --out_dir (default data/sst2):
    train.jsonl, val.jsonl, test.jsonl   {"prompt": "<sentence> Sentiment:", "completion": " positive", "label": 1}
    train_text.txt                       the train sentences without labels, one per line
    review_{train,val,test}.jsonl        the other direction, review writing steered by the label:
                                         {"prompt": "Positive review:", "completion": " <sentence>", "label": 1}
                                         (train keeps lines of REVIEW_MIN_WORDS words or more: SST-2's
                                         train file is mostly phrases, not sentences)
    meta.json                            "labels": [" negative", " positive"] (index = label), sizes, seed
"""
import json
import os
import random
import sys

# run as a script, Python puts this folder on sys.path, not the repo root that holds data/
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.checks import Parser, decode_utf8, positive, read_release, seed, url  # noqa: E402
from data.files import write_atomic, write_json  # noqa: E402

URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
LABELS = [" negative", " positive"]  # the candidate completions; index = label
SENTENCE_COLUMNS = ("sentence", "content")  # GLUE says sentence; some copies say content
HOW = "pass --dir PATH (a folder with train.tsv and dev.tsv) or set PREFIXGPT_SST2"


def read_rows(data: bytes, name: str) -> list[tuple[str, int]]:
    """(sentence, label) pairs from the bytes of a TSV file; columns are found by header name."""
    try:
        text = decode_utf8(data, name)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    # not the csv module: SST sentences contain unbalanced quotes, and a TSV line is just fields split on tabs
    lines = text.split("\n")
    header = [h.strip().lower() for h in lines[0].split("\t")] if lines else []
    text_col = next((c for c in SENTENCE_COLUMNS if c in header), None)
    if text_col is None or "label" not in header:
        raise SystemExit(f"{name}: needs a header with a label column and a sentence (or content) column, "
                         f"found {header}; {HOW}")
    i_text, i_label = header.index(text_col), header.index("label")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise SystemExit(f"{name}:{n}: expected {len(header)} tab-separated fields, found {len(fields)}")
        label = fields[i_label].strip()
        if label not in ("0", "1"):
            raise SystemExit(f"{name}:{n}: label must be 0 or 1, found {label!r}")
        sentence = " ".join(fields[i_text].split())  # strip and collapse runs of whitespace
        if sentence:  # an empty sentence has nothing to classify
            rows.append((sentence, int(label)))
    return rows


def read_tsv(path: str) -> list[tuple[str, int]]:
    if os.path.isdir(path):
        raise SystemExit(f"{path} is a folder, not an SST-2 TSV file; {HOW}")
    if not os.path.isfile(path):
        raise SystemExit(f"SST-2 file not found: {path}; {HOW}")
    with open(path, "rb") as f:
        return read_rows(f.read(), path)


def split_train_val(rows, val_size=1000, seed=1337) -> tuple[list, list]:
    """Hold out val_size seeded random lines of rows as val; train is the rest.

    SST-2's train file repeats a few hundred sentences, so train also loses every line whose
    sentence is in val: otherwise val would score some sentences the model was trained on.
    """
    if not 0 < val_size < len(rows):
        raise SystemExit(f"--val_size must be between 1 and {len(rows) - 1} (train.tsv has {len(rows)} lines)")
    picked = set(random.Random(seed).sample(range(len(rows)), val_size))
    val = [row for i, row in enumerate(rows) if i in picked]
    val_sentences = {sentence for sentence, _ in val}
    train = [row for i, row in enumerate(rows) if i not in picked and row[0] not in val_sentences]
    return train, val


def to_example(sentence: str, label: int) -> dict:
    return {"prompt": f"{sentence} Sentiment:", "completion": LABELS[label], "label": label}


REVIEW_PROMPTS = ["Negative review:", "Positive review:"]   # index = label
REVIEW_MIN_WORDS = 8


def to_review(sentence: str, label: int) -> dict:
    """Review writing: the label is the input, the sentence the output (the classifier's task reversed)."""
    return {"prompt": REVIEW_PROMPTS[label], "completion": f" {sentence}", "label": label}


def write_task(splits: dict[str, list], out_dir: str, meta: dict) -> dict:
    """Write <split>.jsonl, train_text.txt and meta.json; returns meta with the split sizes added."""
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(meta, labels=LABELS, splits={})
    for name in ("train", "val", "test"):
        rows = splits[name]
        lines = [json.dumps(to_example(s, y), ensure_ascii=False) + "\n" for s, y in rows]
        write_atomic(os.path.join(out_dir, f"{name}.jsonl"), "".join(lines))
        # the label counts give the majority-class baseline that any accuracy should beat
        meta["splits"][name] = {"lines": len(rows), "per_label": [sum(y == k for _, y in rows) for k in (0, 1)]}
        # a phrase of a few words is not a review: train only on sentence-like lines (val and test
        # keep every line, so that they stay the classifier's held-out lines)
        reviews = [(s, y) for s, y in rows if name != "train" or len(s.split()) >= REVIEW_MIN_WORDS]
        write_atomic(os.path.join(out_dir, f"review_{name}.jsonl"),
                     "".join(json.dumps(to_review(s, y), ensure_ascii=False) + "\n" for s, y in reviews))
    # only train sentences: val/test text in pretraining would be a (mild) leak
    write_atomic(os.path.join(out_dir, "train_text.txt"), "".join(s + "\n" for s, _ in splits["train"]))
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta


def download_glue(out_dir: str, url: str = URL, timeout: float = 30.0) -> tuple[list, list]:
    """(train rows, dev rows) from GLUE's zip (kept in out_dir, so a second run needs no network)."""
    members = read_release(url, os.path.join(out_dir, "SST-2.zip"), ("train.tsv", "dev.tsv"), "SST-2", HOW, timeout)
    return read_rows(*members["train.tsv"]), read_rows(*members["dev.tsv"])


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--dir", default=os.environ.get("PREFIXGPT_SST2") or None,
                   help="folder with train.tsv and dev.tsv; default $PREFIXGPT_SST2, else download")
    p.add_argument("--url", type=url, default=os.environ.get("PREFIXGPT_SST2_URL") or URL,
                   help="where to download SST-2.zip from; default $PREFIXGPT_SST2_URL, else GLUE's URL")
    p.add_argument("--out_dir", default="data/sst2")
    p.add_argument("--val_size", type=positive, default=1000, help="train lines held out as val")
    p.add_argument("--seed", type=seed, default=1337)
    args = p.parse_args(argv)
    if args.dir and os.path.isfile(args.dir):
        p.error(f"argument --dir: {args.dir} is a file; pass the folder that holds train.tsv and dev.tsv")
    if args.dir:
        train_rows = read_tsv(os.path.join(args.dir, "train.tsv"))
        test_rows = read_tsv(os.path.join(args.dir, "dev.tsv"))
        source = "local train.tsv and dev.tsv"
    else:
        train_rows, test_rows = download_glue(args.out_dir, args.url)
        source = args.url
    train, val = split_train_val(train_rows, args.val_size, args.seed)
    meta = {"source": source, "test": "GLUE dev.tsv", "val_size": args.val_size, "seed": args.seed,
            "train_dropped_as_val_duplicates": len(train_rows) - len(train) - len(val)}
    meta = write_task({"train": train, "val": val, "test": test_rows}, args.out_dir, meta)
    for name, size in meta["splits"].items():
        print(f"{name:5s} {size['lines']:6d} lines (negative/positive {size['per_label'][0]}/{size['per_label'][1]})"
              f" -> {os.path.join(args.out_dir, name)}.jsonl")
    return meta


if __name__ == "__main__":
    main()
