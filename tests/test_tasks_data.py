"""Tests of data/e2e/prepare.py and data/sst2/prepare.py on small hand-made files (no network)."""
import csv
import json
import os
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from data.e2e import mr as mr_format
from data.e2e import prepare as e2e
from data.sst2 import prepare as sst2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


# ---------------------------------------------------------------- E2E

def e2e_rows(n_mrs=20):
    """n_mrs MRs with 1, 2 or 3 references each; some with £ and é."""
    rows = []
    for i in range(n_mrs):
        mr = f"name[Café {i}], priceRange[£20-25], area[city centre]"
        for j in range(1 + i % 3):
            rows.append((mr, f"Café {i} costs £20-25, réf {j}."))
    return rows


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)  # quotes the MRs, which contain commas
        w.writerow(["mr", "ref"])
        w.writerows(rows)
    return str(path)


def test_split_by_mr_keeps_mrs_whole_and_loses_no_row():
    rows = e2e_rows(20)
    splits = e2e.split_by_mr(rows, seed=1337, fractions=(0.8, 0.1, 0.1))
    mrs = {name: {mr for mr, _ in part} for name, part in splits.items()}
    assert [len(mrs[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert not (mrs["train"] & mrs["val"] or mrs["train"] & mrs["test"] or mrs["val"] & mrs["test"])
    assert sorted(r for part in splits.values() for r in part) == sorted(rows)  # each row exactly once
    assert e2e.split_by_mr(rows, seed=1337, fractions=(0.8, 0.1, 0.1)) == splits  # seeded: the same every run
    # the split depends on the set of MRs, not on the order of the file
    shuffled = e2e.split_by_mr(list(reversed(rows)), seed=1337, fractions=(0.8, 0.1, 0.1))
    assert {name: {mr for mr, _ in part} for name, part in shuffled.items()} == mrs


def test_split_by_name_never_shows_a_val_or_test_name_in_train():
    """E2E's official test holds restaurants its train set never has: the offline split imitates that. Every
    name's MRs land in one split; val and test names never occur in train, in an MR or in a reference."""
    rows = [(f"name[Place {n}], food[{f}]", f"Place {n} serves {f} food {j}.")
            for n in range(12) for f in ("Thai", "French")[:1 + n % 2] for j in range(2)]
    rows += [("eatType[pub], food[Thai]", "A Thai pub.")]               # an MR with no name trains
    splits = e2e.split_by_name(rows, seed=1337, fractions=(0.7, 0.1, 0.2))
    names = {s: set(e2e.names_of(part)) for s, part in splits.items()}
    assert all(names.values()) and not (names["train"] & (names["val"] | names["test"]) or names["val"] & names["test"])
    train_text = " ".join(ref for _, ref in splits["train"]) + " ".join(mr for mr, _ in splits["train"])
    assert not any(f"{n}," in train_text + "," or f"[{n}]" in train_text for n in names["val"] | names["test"])
    assert ("eatType[pub], food[Thai]", "A Thai pub.") in splits["train"]
    assert sorted(r for part in splits.values() for r in part) == sorted(rows)      # each row exactly once
    n_mrs = len({mr for mr, _ in rows})
    held = {s: len({mr for mr, _ in part}) for s, part in splits.items()}
    assert held["test"] <= 1.25 * 0.2 * n_mrs and held["val"] <= 1.25 * 0.1 * n_mrs + 2
    assert e2e.split_by_name(list(reversed(rows)), seed=1337, fractions=(0.7, 0.1, 0.2)).keys() == splits.keys()
    assert names != {s: set(e2e.names_of(p)) for s, p in e2e.split_by_name(rows, 1, (0.7, 0.1, 0.2)).items()}


def test_invented_names_replace_name_and_near_alike_in_mr_and_reference():
    rows = [("name[Cocum], eatType[pub], near[The Sorrento]", "Cocum is a pub near The Sorrento."),
            ("eatType[pub]", "A pub.")]                                     # no name: nothing to invent
    out = e2e.with_invented_names(rows, copies=3, seed=0)
    assert len(out) == 3 and len({mr for mr, _ in out}) == 3                # a fresh pair every copy
    for mr, ref in out:
        fields = dict(e2e.mr_fields(mr))
        assert fields["eatType"] == "pub" and fields["name"] not in ("Cocum", "The Sorrento")
        assert ref == f"{fields['name']} is a pub near {fields['near']}."
    assert out == e2e.with_invented_names(rows, copies=3, seed=0) != e2e.with_invented_names(rows, copies=3, seed=1)


def test_invented_names_add_to_train_only(tmp_path):
    csv = tmp_path / "dev.csv"
    csv.write_text("mr,ref\n" + "".join(f'"name[Place {n}], food[Thai]","Place {n} serves Thai food."\n' for n in range(10)))
    plain = e2e.main(["--csv", str(csv), "--out_dir", str(tmp_path / "a")])
    more = e2e.main(["--csv", str(csv), "--out_dir", str(tmp_path / "b"), "--invented_names", "2"])
    assert more["splits"]["train"]["lines"] == 3 * plain["splits"]["train"]["lines"]
    assert more["splits"]["train"]["names"] == plain["splits"]["train"]["names"]       # the real ones
    assert more["splits"]["train"]["invented_lines"] == 2 * plain["splits"]["train"]["lines"]
    for split in ("val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_text() == (tmp_path / "b" / f"{split}.jsonl").read_text()
    facts = (tmp_path / "b" / "train_facts.txt").read_text().splitlines()
    assert len(facts) == more["splits"]["train"]["lines"]


def test_e2e_cli_writes_jsonl_text_and_meta(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    rows = e2e_rows(20)
    out = tmp_path / "out"
    meta = e2e.main(["--csv", write_csv(tmp_path / "pool.csv", rows), "--out_dir", str(out)])
    split_of_prompt, seen = {}, []
    for name in ("train", "val", "test"):
        lines = read_jsonl(out / f"{name}.jsonl")
        assert len(lines) == meta["splits"][name]["lines"]
        for ex in lines:
            assert set(ex) == {"prompt", "completion"}
            assert ex["prompt"].endswith(" ||") and ex["completion"].startswith(" ")
            # an MR's references all share one prompt, and that prompt lives in one split only
            assert split_of_prompt.setdefault(ex["prompt"], name) == name
            seen.append((ex["prompt"][:-3], ex["completion"][1:]))
    assert sorted(seen) == sorted(rows)
    assert len(split_of_prompt) == 20
    # references of one MR share exactly the same prompt string
    n_prompts = {p for p in split_of_prompt if p.startswith("name[Café 5],")}
    assert len(n_prompts) == 1
    # UTF-8 kept as characters, not \u escapes
    raw = (out / "train.jsonl").read_bytes().decode("utf-8")
    assert "£" in raw and "é" in raw and "\\u" not in raw
    # train_text: exactly the train references, nothing from val or test
    train_refs = [ex["completion"][1:] for ex in read_jsonl(out / "train.jsonl")]
    assert read_lines(out / "train_text.txt") == train_refs
    held_out = {ex["completion"][1:] for s in ("val", "test") for ex in read_jsonl(out / f"{s}.jsonl")}
    assert not held_out & set(train_refs)
    # train_facts: each train reference then its own MR (the task reversed); no val or test MR in it
    facts = read_lines(out / "train_facts.txt")
    assert facts == [f"{ex['completion'][1:]} Facts: {ex['prompt'][:-3]}" for ex in read_jsonl(out / "train.jsonl")]
    held_out_mrs = {ex["prompt"][:-3] for s in ("val", "test") for ex in read_jsonl(out / f"{s}.jsonl")}
    assert not any(line.split(" Facts: ")[1] in held_out_mrs for line in facts)
    on_disk = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert on_disk["seed"] == 1337 and on_disk["splits"]["val"]["mrs"] == 2 and on_disk["mr_format"] == "brackets"
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes cleaned up


def test_mr_formats_write_the_same_pairs_and_the_name_is_found_in_either():
    mr = "name[The Eagle], eatType[coffee shop], customer rating[5 out of 5], near[Café Brazil]"
    assert mr_format.format_mr(mr, "brackets") == mr
    spaced = mr_format.format_mr(mr, "spaced")
    assert spaced == "name : The Eagle | eatType : coffee shop | customer rating : 5 out of 5 | near : Café Brazil"
    for text in (mr, spaced):
        assert mr_format.mr_name(text + " ||") == "The Eagle"
    assert mr_format.mr_name("name : Zizzi ||") == mr_format.mr_name("name[Zizzi] ||") == "Zizzi"
    assert mr_format.mr_name("eatType : pub | food : Thai ||") is None and mr_format.mr_name("nickname[X] ||") is None
    # what is not attribute[value] pairs is kept as it is rather than cut into pairs that lose text
    for odd in ("a free sentence", "name[X] and more", "name[X], area[Y]]"):
        assert mr_format.mr_fields(odd) is None and mr_format.format_mr(odd, "spaced") == odd
    with pytest.raises(ValueError, match="one of brackets, spaced"):
        mr_format.format_mr(mr, "csv")


def test_e2e_spaced_format_writes_it_in_prompts_and_facts(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    rows = e2e_rows(20)
    out = tmp_path / "out"
    meta = e2e.main(["--csv", write_csv(tmp_path / "pool.csv", rows), "--out_dir", str(out), "--mr_format", "spaced"])
    assert meta["mr_format"] == "spaced" and json.loads((out / "meta.json").read_text())["mr_format"] == "spaced"
    train = read_jsonl(out / "train.jsonl")
    spaced = {mr_format.format_mr(mr, "spaced"): mr for mr, _ in rows}
    assert all(ex["prompt"][:-3] in spaced for ex in train)            # every prompt: an MR of the pool, spaced
    assert train[0]["prompt"].startswith("name : Café ") and "|" in train[0]["prompt"][:-3]
    assert read_lines(out / "train_facts.txt") == [f"{ex['completion'][1:]} Facts: {ex['prompt'][:-3]}" for ex in train]


@pytest.mark.parametrize("order", ["facts-first", "both"])
def test_facts_order_puts_the_record_before_the_prose_and_never_the_tasks_marker(tmp_path, monkeypatch, order):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    out = tmp_path / order
    meta = e2e.main(["--csv", write_csv(tmp_path / "pool.csv", e2e_rows(20)), "--out_dir", str(out),
                     "--facts_order", order])
    assert meta["facts_order"] == order
    train = read_jsonl(out / "train.jsonl")
    first = [f"Facts: {ex['prompt'][:-3]} In words: {ex['completion'][1:]}" for ex in train]
    last = [f"{ex['completion'][1:]} Facts: {ex['prompt'][:-3]}" for ex in train]
    lines = read_lines(out / "train_facts.txt")
    assert lines == (first if order == "facts-first" else [x for pair in zip(last, first) for x in pair])
    assert not any("||" in line for line in lines)          # the base never sees the task's own prompt


def test_e2e_pools_repeated_csv_and_reads_env(tmp_path, monkeypatch):
    rows = e2e_rows(10)
    a = write_csv(tmp_path / "a.csv", rows[:7])
    b = write_csv(tmp_path / "b.csv", rows[7:])
    meta = e2e.main(["--csv", a, "--csv", b, "--out_dir", str(tmp_path / "ab")])
    assert sum(s["lines"] for s in meta["splits"].values()) == len(rows)
    monkeypatch.setenv("PREFIXGPT_E2E", write_csv(tmp_path / "all.csv", rows))
    meta = e2e.main(["--out_dir", str(tmp_path / "env")])
    assert meta["source"] == ["all.csv"] and sum(s["mrs"] for s in meta["splits"].values()) == 10


def test_e2e_missing_file_is_a_one_line_exit(tmp_path):
    with pytest.raises(SystemExit) as e:
        e2e.main(["--csv", str(tmp_path / "nope.csv"), "--out_dir", str(tmp_path)])
    assert "nope.csv" in str(e.value) and "--csv" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("meaning,text\na,b\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="mr and ref"):
        e2e.main(["--csv", str(bad), "--out_dir", str(tmp_path)])
    # the same as a script: nonzero exit status, one line on stderr, no traceback
    env = {k: v for k, v in os.environ.items() if k != "PREFIXGPT_E2E"}
    r = subprocess.run([sys.executable, "data/e2e/prepare.py", "--csv", str(tmp_path / "nope.csv"),
                        "--out_dir", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--csv" in r.stderr


def refuse(*args, **kwargs):
    raise urllib.error.URLError("no network in tests")


def test_offline_without_local_data_is_a_one_line_exit(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(SystemExit) as e:
        e2e.main(["--out_dir", str(tmp_path / "e2e")])
    assert "--csv" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        sst2.main(["--out_dir", str(tmp_path / "sst2")])
    assert "--dir" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.rglob("*.zip"))  # no half-downloaded zip left to trip the next run


# ---------------------------------------------------------------- SST-2

def write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for fields in rows:
            f.write("\t".join(fields) + "\n")


def sst2_dir(tmp_path, train_header=("label", "sentence"), dev_header=("label", "content")):
    d = tmp_path / "sst2_in"
    d.mkdir()
    train = [(str(i % 2), f"train  sentence {i} , it 's \"great\"  ") for i in range(12)] + [("1", "   ")]
    if train_header[0] == "sentence":  # GLUE's own order: sentence first
        train = [(s, y) for y, s in train]
    write_tsv(d / "train.tsv", train_header, train)
    write_tsv(d / "dev.tsv", dev_header, [("0", "dev one ."), ("1", "dev two , café .")])
    return str(d)


@pytest.mark.parametrize("train_header", [("label", "sentence"), ("sentence", "label")])
def test_sst2_cli(tmp_path, monkeypatch, train_header):
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    out = tmp_path / "out"
    meta = sst2.main(["--dir", sst2_dir(tmp_path, train_header), "--out_dir", str(out), "--val_size", "3"])
    train, val, test = (read_jsonl(out / f"{s}.jsonl") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (9, 3, 2)  # 12 non-empty train lines; the blank one skipped
    assert meta["labels"] == [" negative", " positive"]
    for ex in train + val + test:
        assert set(ex) == {"prompt", "completion", "label"}
        assert ex["completion"] == meta["labels"][ex["label"]]
        assert ex["prompt"].endswith(" Sentiment:") and "  " not in ex["prompt"]  # whitespace collapsed
    assert test[1] == {"prompt": "dev two , café . Sentiment:", "completion": " positive", "label": 1}
    assert all('"great"' in ex["prompt"] for ex in train + val)  # quotes are text, not CSV quoting
    sentences = lambda rows: [ex["prompt"][:-len(" Sentiment:")] for ex in rows]
    assert read_lines(out / "train_text.txt") == sentences(train)  # train only, no labels
    assert not set(sentences(val)) & set(sentences(train))
    assert json.loads((out / "meta.json").read_text(encoding="utf-8"))["splits"]["val"]["lines"] == 3
    # review writing: the same lines, the label as input; train keeps sentence-like lines only
    for name, rows in (("train", train), ("val", val), ("test", test)):
        reviews = read_jsonl(out / f"review_{name}.jsonl")
        kept = [ex for ex in rows if name != "train" or len(ex["prompt"].split()) - 1 >= sst2.REVIEW_MIN_WORDS]
        assert [(r["prompt"], r["completion"], r["label"]) for r in reviews] == [
            (sst2.REVIEW_PROMPTS[ex["label"]], " " + ex["prompt"][:-len(" Sentiment:")], ex["label"]) for ex in kept]
    assert sst2.REVIEW_PROMPTS == ["Negative review:", "Positive review:"]


def test_sst2_val_never_shares_a_sentence_with_train():
    rows = [("same", 1)] * 5 + [(f"s{i}", i % 2) for i in range(20)]
    for seed in range(20):
        train, val = sst2.split_train_val(rows, val_size=4, seed=seed)
        assert len(val) == 4 and not {s for s, _ in val} & {s for s, _ in train}
        assert len(train) + len(val) <= len(rows)


def test_sst2_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    with pytest.raises(SystemExit) as e:
        sst2.main(["--dir", str(tmp_path / "missing"), "--out_dir", str(tmp_path / "o")])
    assert "train.tsv" in str(e.value) and "--dir" in str(e.value) and "\n" not in str(e.value)
    d = tmp_path / "bad"
    d.mkdir()
    write_tsv(d / "train.tsv", ("label", "sentence"), [("0", "fine"), ("2", "bad label")])
    write_tsv(d / "dev.tsv", ("label", "sentence"), [("0", "x")])
    with pytest.raises(SystemExit, match=r"train.tsv:3: label must be 0 or 1"):
        sst2.main(["--dir", str(d), "--out_dir", str(tmp_path / "o")])
    write_tsv(d / "train.tsv", ("label", "text"), [("0", "fine")])
    with pytest.raises(SystemExit, match="sentence"):
        sst2.main(["--dir", str(d), "--out_dir", str(tmp_path / "o")])
    write_tsv(d / "train.tsv", ("label", "sentence"), [("0", "a"), ("1", "b")])
    with pytest.raises(SystemExit, match="val_size"):
        sst2.main(["--dir", str(d), "--out_dir", str(tmp_path / "o"), "--val_size", "2"])


# ---------------------------------------------------------------- bad values, folders, bytes: one line each

def script(path, *args):
    """Run a prepare script as a user would (no local-data variables); returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFIXGPT_E2E", "PREFIXGPT_SST2")}
    return subprocess.run([sys.executable, path, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def exit_message(main, args) -> str:
    """The message of the SystemExit that main(args) raises, checked to be one line."""
    with pytest.raises(SystemExit) as e:
        main(args)
    message = str(e.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("args,message", [
    (["--fractions", "0.8", "0.5", "0.5"], "argument --fractions: must sum to 1, got 0.8 + 0.5 + 0.5"),
    (["--fractions", "0.6", "0.2", "0.1"], "must sum to 1"),
    (["--fractions", "0", "0.5", "0.5"], "argument --fractions: must be between 0 and 1"),
    (["--fractions", "1.2", "-0.1", "-0.1"], "must be between 0 and 1"),
    (["--fractions", "nan", "0.5", "0.5"], "must be between 0 and 1"),
    (["--fractions", "0.8", "0.2"], "expected 3 arguments"),
    (["--fractions", "a", "b", "c"], "invalid fraction value: 'a'"),
    (["--seed", "-1"], "argument --seed: must be 0 or more"),
    (["--seed", "1.5"], "invalid seed value"),
    (["--invented_names", "-2"], "argument --invented_names: must be 0 or more, got -2"),
    (["--invented_names", "three"], "invalid count value: 'three'"),
    (["--facts_order", "prose-first"], "invalid choice: 'prose-first'"),
    (["--mr_format", "csv"], "invalid choice: 'csv'"),
])
def test_e2e_bad_values_are_refused_where_they_are_parsed(tmp_path, monkeypatch, args, message):
    # 0.8 0.5 0.5 used to write an empty val split without a word
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    pool = write_csv(tmp_path / "pool.csv", e2e_rows(20))
    assert message in exit_message(e2e.main, ["--csv", pool, "--out_dir", str(tmp_path / "out")] + args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--val_size", "0"], "argument --val_size: must be 1 or more, got 0"),
    (["--val_size", "-3"], "must be 1 or more"),
    (["--val_size", "ten"], "invalid positive value: 'ten'"),
    (["--seed", "-7"], "argument --seed: must be 0 or more"),
])
def test_sst2_bad_values_are_refused_where_they_are_parsed(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    d = sst2_dir(tmp_path)
    assert message in exit_message(sst2.main, ["--dir", d, "--out_dir", str(tmp_path / "out")] + args)
    assert not (tmp_path / "out").exists()


def test_a_bad_flag_is_one_line_on_stderr_not_argparse_usage(tmp_path):
    pool = write_csv(tmp_path / "pool.csv", e2e_rows(20))
    for args, message in ((["data/e2e/prepare.py", "--csv", pool, "--fractions", "0.8", "0.5", "0.5"], "sum to 1"),
                          (["data/e2e/prepare.py", "--seed", "abc"], "invalid seed value"),
                          (["data/sst2/prepare.py", "--val_size", "0"], "--val_size"),
                          (["data/sst2/prepare.py", "--no_such_flag"], "unrecognized arguments")):
        res = script(*args, "--out_dir", str(tmp_path / "out"))
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert message in res.stderr and "usage:" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_where_a_file_belongs_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    folder = tmp_path / "folder"
    folder.mkdir()
    message = exit_message(e2e.main, ["--csv", str(folder), "--out_dir", str(tmp_path / "out")])
    assert f"{folder} is a folder" in message and "--csv" in message
    monkeypatch.setenv("PREFIXGPT_E2E", str(folder))
    assert f"{folder} is a folder" in exit_message(e2e.main, ["--out_dir", str(tmp_path / "out")])
    # SST-2's --dir is the other way round: a file where a folder belongs
    a_file = write_csv(tmp_path / "pool.csv", e2e_rows(3))
    message = exit_message(sst2.main, ["--dir", a_file, "--out_dir", str(tmp_path / "out")])
    assert f"argument --dir: {a_file} is a file" in message and "train.tsv" in message
    (folder / "train.tsv").mkdir()
    message = exit_message(sst2.main, ["--dir", str(folder), "--out_dir", str(tmp_path / "out")])
    assert f"{folder / 'train.tsv'} is a folder" in message
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFIXGPT_E2E", raising=False)
    monkeypatch.delenv("PREFIXGPT_SST2", raising=False)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("mr,ref\nname[A],A is fine.\nname[Café],\"Café B, on line 3.\"\n".encode("latin-1"))
    message = exit_message(e2e.main, ["--csv", str(latin1), "--out_dir", str(tmp_path / "out")])
    assert f"{latin1}:3: not UTF-8 text" in message and "0xe9" in message
    binary = tmp_path / "binary.csv"
    binary.write_bytes(random.Random(0).randbytes(4000))
    assert re.search(rf"{re.escape(str(binary))}:\d+: not UTF-8 text",
                     exit_message(e2e.main, ["--csv", str(binary), "--out_dir", str(tmp_path / "out")]))
    d = tmp_path / "sst2"
    d.mkdir()
    write_tsv(d / "train.tsv", ("label", "sentence"), [("0", "fine"), ("1", "also fine")])
    (d / "dev.tsv").write_bytes(b"label\tsentence\n0\tok\n1\tna\xefve\n")
    message = exit_message(sst2.main, ["--dir", str(d), "--out_dir", str(tmp_path / "out"), "--val_size", "1"])
    assert f"{d / 'dev.tsv'}:3: not UTF-8 text" in message
    (d / "dev.tsv").write_bytes(b"label\tsentence\n0\tok\x00\x01\x02\n")   # a NUL: binary, even if valid UTF-8
    message = exit_message(sst2.main, ["--dir", str(d), "--out_dir", str(tmp_path / "out"), "--val_size", "1"])
    assert f"{d / 'dev.tsv'}:2: not UTF-8 text (byte 19 is 0x00)" in message
    assert not (tmp_path / "out").exists()
    # as a script: the same line on stderr, nothing else
    res = script("data/e2e/prepare.py", "--csv", str(latin1), "--out_dir", str(tmp_path / "out"))
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [f"{latin1}:3: not UTF-8 text (byte 34 is "
                                                                      "0xe9): save it as UTF-8, or pass the right file"]


# ---------------------------------------------------------------- data/tasks.py

def write_bytes(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def one_line_error(fn, *args, kind=ValueError) -> str:
    """What fn(*args) raises: the error types the root scripts' main_guard prints as one line."""
    with pytest.raises(kind) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_task_files_that_are_not_utf8_name_the_line(tmp_path):
    from data.tasks import load_task, read_jsonl
    from data.tokenizer import ByteTokenizer
    good = json.dumps({"prompt": "a ||", "completion": " b"}) + "\n"
    path = write_bytes(tmp_path / "latin1.jsonl", (good + '{"prompt": "Caf\xe9 ||", "completion": " c"}\n')
                       .encode("latin-1"))
    assert f"{path}:2: not UTF-8 text" in one_line_error(read_jsonl, path)
    path = write_bytes(tmp_path / "binary.jsonl", random.Random(1).randbytes(4000))
    assert re.search(r"binary.jsonl:\d+: not (UTF-8 text|valid JSON)", one_line_error(read_jsonl, path))
    path = write_bytes(tmp_path / "latin1.txt", "one\ntwo\nthree caf\xe9\n".encode("latin-1"))
    assert f"{path}:3: not UTF-8 text (byte 17 is 0xe9)" in one_line_error(load_task, path, ByteTokenizer(), 16)


def test_a_task_path_that_is_a_folder_is_one_line(tmp_path):
    from data.tasks import load_task, read_jsonl
    from data.tokenizer import ByteTokenizer
    for name in ("train.jsonl", "train.txt", "train.bin"):
        (tmp_path / name).mkdir()
        message = one_line_error(load_task, str(tmp_path / name), ByteTokenizer(), 16)
        assert f"{tmp_path / name} is a folder" in message
    assert "is a folder" in one_line_error(read_jsonl, str(tmp_path / "train.jsonl"))
    assert "not found" in one_line_error(read_jsonl, str(tmp_path / "nope.jsonl"), kind=FileNotFoundError)


def test_an_example_with_nothing_in_it_is_refused_but_one_empty_side_is_fine(tmp_path):
    from data.tasks import collate, load_task, read_jsonl
    from data.tokenizer import ByteTokenizer
    rows = [{"prompt": "a ||", "completion": " b"}, {"prompt": "", "completion": " c"},
            {"prompt": "d ||", "completion": ""}]
    ok = tmp_path / "ok.jsonl"
    ok.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, _ = load_task(str(ok), ByteTokenizer(), 32)
    _, y = collate(examples)
    assert [int((row != -1).sum()) for row in y] == [3, 2, 1]   # every example has a target (" c": c and the end)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"prompt": "", "completion": ""}]),
                   encoding="utf-8")
    # it used to pass, and a batch of only such lines gave a loss of 0/0
    assert f"{bad}:4: empty prompt and completion" in one_line_error(read_jsonl, str(bad))
    assert f"{bad}:4: empty prompt and completion" in one_line_error(load_task, str(bad), ByteTokenizer(), 32)


def test_a_bin_task_with_a_damaged_meta_json_is_one_line(tmp_path):
    from data.tasks import load_task
    from data.tokenizer import ByteTokenizer
    (tmp_path / "train.bin").write_bytes(b"\x01\x00" * 10)
    for meta, message in (("{not json", "meta.json is damaged"), ('{"tokenizer": "byte"}', "lacks vocab_size, dtype"),
                          ('{"tokenizer": "byte", "vocab_size": 256, "dtype": "uint99"}', "unknown dtype 'uint99'")):
        (tmp_path / "meta.json").write_text(meta, encoding="utf-8")
        assert message in one_line_error(load_task, str(tmp_path / "train.bin"), ByteTokenizer(), 16)
