"""
Prepare the E2E NLG task (restaurant meaning representation -> English sentence) as JSONL.

    python data/e2e/prepare.py                        # download the official release (train/dev/test)
    python data/e2e/prepare.py --url URL              # from a mirror (default: $PREFIXGPT_E2E_URL, else URL below)
    python data/e2e/prepare.py --csv devset.csv       # or split local CSV files (columns mr,ref) by restaurant name
    python data/e2e/prepare.py --csv devset.csv --split mr   # ... or by MR (names shared by the splits)
    PREFIXGPT_E2E=devset.csv python -m data.e2e.prepare

    python data/e2e/prepare.py --mr_format spaced     # MRs as "name : X | area : Y" (Li & Liang's; data/e2e/mr.py)
    python data/e2e/prepare.py --invented_names 3     # + 3 copies of each train line under invented names

Writes to --out_dir (default data/e2e):
    train.jsonl, val.jsonl, test.jsonl   one line per reference: {"prompt": "<mr> ||", "completion": " <ref>"},
                                         the MR as the CSV writes it, "name[Alimentum], area[riverside]"
                                         (--mr_format brackets), or "name : Alimentum | area : riverside" (spaced)
    train_text.txt                       the train references, one per line (unlabelled text to pretrain on)
    train_facts.txt                      each train reference followed by its MR: "<ref> Facts: <mr>" (text →
                                         data, the task reversed: pretraining text that carries names
                                         across a line; make demo pretrains on it); --facts_order
                                         facts-first: "Facts: <mr> In words: <ref>", or both
    meta.json                            where the data came from, split sizes, seed, MR format

Every MR has several human references. They all get the same prompt, which is how the BLEU
evaluation (metrics.group_references) finds the reference set of each MR.
"""
import csv
import io
import json
import os
import random
import sys

# run as a script, Python puts this folder on sys.path, not the repo root that holds data/
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.checks import Parser, count, decode_utf8, fraction, read_release, seed, url  # noqa: E402
from data.e2e.mr import MR_FORMATS, format_mr, mr_fields  # noqa: E402
from data.files import write_atomic, write_json  # noqa: E402

URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
OFFICIAL = {"train": "trainset.csv", "val": "devset.csv", "test": "testset_w_refs.csv"}
SPLITS = ("train", "val", "test")
HOW = "pass --csv PATH (an E2E CSV with columns mr,ref; may be repeated) or set PREFIXGPT_E2E"


def clean(text: str) -> str:
    # CSV fields can hold newlines and stray spaces; one space everywhere keeps one example per line
    return " ".join(text.split())


def read_rows(data: bytes, name: str) -> list[tuple[str, str]]:
    """(mr, ref) pairs from the bytes of a CSV file; columns are found by header name, not position."""
    try:
        text = decode_utf8(data, name)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="": quoted fields may hold line breaks
    header = [h.strip().lower() for h in next(reader, [])]
    if "mr" not in header or "ref" not in header:
        raise SystemExit(f"{name}: needs a header with columns mr and ref, found {header}; {HOW}")
    i_mr, i_ref = header.index("mr"), header.index("ref")
    rows = []
    for fields in reader:
        if len(fields) <= max(i_mr, i_ref):
            continue  # blank or ragged line
        mr, ref = clean(fields[i_mr]), clean(fields[i_ref])
        if mr and ref:
            rows.append((mr, ref))
    return rows


def read_csv(path: str) -> list[tuple[str, str]]:
    if os.path.isdir(path):
        raise SystemExit(f"{path} is a folder, not an E2E CSV file; {HOW}")
    if not os.path.isfile(path):
        raise SystemExit(f"E2E file not found: {path}; {HOW}")
    with open(path, "rb") as f:
        return read_rows(f.read(), path)


def split_by_mr(rows, seed=1337, fractions=(0.7, 0.1, 0.2)) -> dict[str, list]:
    """Split (mr, ref) rows into train/val/test so that every MR lands in exactly one split.

    Splitting rows instead would put other references of a test MR into train: the model would be
    scored on inputs it has already seen, and the test BLEU would be too optimistic. This split still
    shares every restaurant name between the splits (split_by_name does not).
    """
    # sorted first, so the split depends only on the seed and the set of MRs, not on file order
    mrs = sorted({mr for mr, _ in rows})
    random.Random(seed).shuffle(mrs)
    n = len(mrs)
    n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
    if n >= 3:  # a tiny pool still gets at least one MR to evaluate on
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    which = {mr: "train" for mr in mrs[:n_train]}
    which.update({mr: "val" for mr in mrs[n_train:n_train + n_val]})
    which.update({mr: "test" for mr in mrs[n_train + n_val:]})
    return _by(which, rows)


def split_by_name(rows, seed=1337, fractions=(0.7, 0.1, 0.2)) -> dict[str, list]:
    """Split (mr, ref) rows by the restaurant's name: all of a name's MRs land in one split, so no val or
    test name ever occurs in train, and a model cannot pass the test by having memorised its names (E2E's
    official test set holds 9 names its train and dev sets never have). Names are dealt in a seeded order:
    to test while it holds less than its fraction of the MRs, then to val likewise, then to train; a name
    that would take a split past 1.25 × its share goes on to the next. MRs without a name stay in train."""
    by_name: dict[str, set] = {}
    for mr, _ in rows:
        by_name.setdefault(dict(mr_fields(mr) or []).get("name", ""), set()).add(mr)
    names = sorted(n for n in by_name if n)
    random.Random(seed).shuffle(names)
    n_mrs = len({mr for mr, _ in rows})
    want = {"test": fractions[2] * n_mrs, "val": fractions[1] * n_mrs}
    held = {"test": 0, "val": 0}
    which = {mr: "train" for mr in by_name.get("", ())}
    for i, name in enumerate(names):
        size = len(by_name[name])
        split = next((s for s in ("test", "val") if held[s] < want[s] and held[s] + size <= 1.25 * want[s]), "train")
        if i == len(names) - 1 and "train" not in which.values():
            split = "train"   # the last name trains if nothing else does
        held[split] = held.get(split, 0) + size
        which.update({mr: split for mr in by_name[name]})
    return _by(which, rows)


def _by(which: dict[str, str], rows) -> dict[str, list]:
    splits = {name: [] for name in SPLITS}
    for mr, ref in rows:  # rows keep their file order inside a split (refs of an MR stay together)
        splits[which[mr]].append((mr, ref))
    return splits


ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "ch", "cr", "gl",
          "pr", "sh", "st", "th", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "ck", "nd", "rn"]


def invent_name(rng: random.Random) -> str:
    """A restaurant name nobody wrote: one or two made-up words of two or three syllables, sometimes after
    "The" ("The Broumar", "Tesvi Lorand"). In the model's tokens it is several pieces it has never seen
    together, so the only way to write it is to copy it from the input."""
    word = lambda: "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)  # noqa: E731
                           for _ in range(rng.choice((2, 2, 3)))).capitalize()
    words = [word() for _ in range(rng.choice((1, 1, 2)))]
    return " ".join((["The"] if rng.random() < 0.3 else []) + words)


def with_invented_names(rows, copies: int, seed: int) -> list[tuple[str, str]]:
    """`copies` more of each (mr, ref) row with its name and near values replaced, in the MR and in the
    reference alike, by invented names (a fresh pair for every copy). Train rows only: the copies teach
    that the name in the sentence is the MR's, whatever it is, instead of one of train's few names."""
    rng, out = random.Random(seed), []
    for mr, ref in rows:
        fields = dict(mr_fields(mr) or [])
        for _ in range(copies if fields.keys() & {"name", "near"} else 0):   # nothing to invent: no copy
            new_mr, new_ref = mr, ref
            for attribute in ("name", "near"):
                old = fields.get(attribute)
                if old:
                    new = invent_name(rng)
                    new_mr = new_mr.replace(f"{attribute}[{old}]", f"{attribute}[{new}]")
                    new_ref = new_ref.replace(old, new)
            out.append((new_mr, new_ref))
    return out


def names_of(rows) -> list[str]:
    return sorted({n for mr, _ in rows if (n := dict(mr_fields(mr) or []).get("name"))})


def to_example(mr: str, ref: str, mr_format: str) -> dict:
    # " ||" ends the prompt; the completion starts with a space so that the reference's first word
    # is tokenised as it would be in running text (" The", not "The")
    return {"prompt": f"{format_mr(mr, mr_format)} ||", "completion": f" {ref}"}


FACTS_ORDERS = ("text-first", "facts-first", "both")


def to_facts(mr: str, ref: str, mr_format: str, order: str = "text-first") -> str:
    """A reference and the attributes it states, as pretraining text. text-first, "<ref> Facts: <mr>", is
    the reverse of the task (sentence → MR): a base that reads it learns that a name in one part of a
    line comes back in another, without ever seeing the task's direction. facts-first, "Facts: <mr> In
    words: <ref>", is the record before the prose: there the name in the sentence can only be copied,
    never guessed, which is the skill the task needs; its markers are not the task's " ||", so the base
    alone still does not answer a prompt. both: one line of each. Train rows only, never val or test."""
    facts = format_mr(mr, mr_format)
    lines = {"text-first": [f"{ref} Facts: {facts}\n"], "facts-first": [f"Facts: {facts} In words: {ref}\n"]}
    return "".join(lines["text-first"] * (order != "facts-first") + lines["facts-first"] * (order != "text-first"))


def write_task(splits: dict[str, list], out_dir: str, meta: dict, mr_format: str, facts_order: str = "text-first",
               invented=()) -> dict:
    """Write <split>.jsonl, train_text.txt, train_facts.txt and meta.json, the MRs in mr_format; returns
    meta with the split sizes and the format added. `invented` (with_invented_names' rows) join train's
    files; train's names in meta stay its real ones, and the invented lines are counted."""
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(meta, mr_format=mr_format, splits={})
    for name in SPLITS:
        rows = splits[name] + list(invented) * (name == "train")
        lines = [json.dumps(to_example(mr, ref, mr_format), ensure_ascii=False) + "\n" for mr, ref in rows]
        write_atomic(os.path.join(out_dir, f"{name}.jsonl"), "".join(lines))
        meta["splits"][name] = {"lines": len(rows), "mrs": len({mr for mr, _ in rows}), "names": names_of(splits[name])}
    if invented:
        meta["splits"]["train"]["invented_lines"] = len(invented)
    train = splits["train"] + list(invented)
    # only train text: pretraining on val/test references would leak the answers into the base model
    write_atomic(os.path.join(out_dir, "train_text.txt"), "".join(ref + "\n" for _, ref in train))
    write_atomic(os.path.join(out_dir, "train_facts.txt"),
                 "".join(to_facts(mr, ref, mr_format, facts_order) for mr, ref in train))
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta


def download_official(out_dir: str, url: str = URL, timeout: float = 30.0) -> dict[str, list]:
    """The official splits from the release zip (kept in out_dir, so a second run needs no network)."""
    members = read_release(url, os.path.join(out_dir, "e2e-dataset.zip"), OFFICIAL.values(), "the E2E data",
                           HOW, timeout)
    return {split: read_rows(*members[name]) for split, name in OFFICIAL.items()}


def main(argv=None) -> dict:
    p = Parser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--csv", action="append", default=None,
                   help="local E2E CSV (columns mr,ref); repeat to pool several; default $PREFIXGPT_E2E")
    p.add_argument("--out_dir", default="data/e2e")
    p.add_argument("--url", type=url, default=os.environ.get("PREFIXGPT_E2E_URL") or URL,
                   help="where to download the release zip from; default $PREFIXGPT_E2E_URL, else the official URL")
    p.add_argument("--seed", type=seed, default=1337)
    p.add_argument("--split", choices=("name", "mr"), default="name",
                   help="how a local pool is split: by restaurant name (the default: no val or test name is ever "
                        "in train, as in E2E's official test), or by MR (every name in every split; easier)")
    p.add_argument("--fractions", type=fraction, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of MRs per split (local pool only; by name, whole names: near these, not exact)")
    p.add_argument("--invented_names", type=count, default=0, metavar="COPIES",
                   help="add COPIES of every train line (train.jsonl and the Facts lines) with its name and near "
                        "replaced by invented names (with_invented_names); 0, the default, adds none")
    p.add_argument("--facts_order", choices=FACTS_ORDERS, default="text-first",
                   help="train_facts.txt: text-first '<ref> Facts: <mr>' (the default), facts-first "
                        "'Facts: <mr> In words: <ref>', or both (to_facts)")
    p.add_argument("--mr_format", choices=MR_FORMATS, default="brackets",
                   help="how the model reads an MR: brackets 'name[X], area[Y]' (the CSV's own, the default), or "
                        "spaced 'name : X | area : Y' (Li & Liang's); data/e2e/mr.py says what each does")
    args = p.parse_args(argv)
    if abs(sum(args.fractions) - 1) > 1e-6:  # 0.8 0.5 0.5 would leave val empty without a word
        p.error(f"argument --fractions: must sum to 1, got {' + '.join(map(str, args.fractions))}")
    paths = args.csv or ([os.environ["PREFIXGPT_E2E"]] if os.environ.get("PREFIXGPT_E2E") else [])
    if paths:
        rows = [row for path in paths for row in read_csv(path)]
        if not rows:
            raise SystemExit(f"no (mr, ref) rows in {', '.join(paths)}; {HOW}")
        splits = (split_by_name if args.split == "name" else split_by_mr)(rows, args.seed, args.fractions)
        meta = {"source": [os.path.basename(x) for x in paths], "split": f"by {args.split}",
                "fractions": list(args.fractions), "seed": args.seed}
    else:
        splits = download_official(args.out_dir, args.url)
        meta = {"source": args.url, "split": "official", "seed": args.seed}
    invented = with_invented_names(splits["train"], args.invented_names, args.seed)   # after the split: train only
    if invented:
        meta["invented_names"] = args.invented_names
    if args.facts_order != "text-first":
        meta["facts_order"] = args.facts_order
    meta = write_task(splits, args.out_dir, meta, args.mr_format, args.facts_order, invented)
    train_names = set(meta["splits"]["train"]["names"])
    for name, size in meta["splits"].items():
        if name != "train":
            unseen = f", {sum(n not in train_names for n in size['names'])} never in train"
        else:
            unseen = f", {size['invented_lines']} of the lines with invented names" if invented else ""
        print(f"{name:5s} {size['lines']:6d} lines {size['mrs']:5d} MRs {len(size['names']):3d} names{unseen} "
              f"-> {os.path.join(args.out_dir, name)}.jsonl")
    return meta


if __name__ == "__main__":
    main()
