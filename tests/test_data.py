"""Tests of data/tokenizer.py, data/shakespeare/prepare.py and data/bins.py on small hand-made texts.

    TIKTOKEN_CACHE_DIR=<folder with tiktoken's GPT-2 files> .venv/bin/python -m pytest -q tests/test_data.py

No network: the CLI runs get --input, and the GPT-2 test needs the tiktoken files (cached or online).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data.bins import load_bin
from data.drills import copy_drills
from data.shakespeare.prepare import fallback_corpus, prepare
from data.tokenizer import ByteTokenizer, get_tokenizer, token_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_prepare(*args, module=False):
    """Run the CLI from the repo root, as a user would; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "data.shakespeare.prepare"] if module else [sys.executable, "data/shakespeare/prepare.py"]
    env = {k: v for k, v in os.environ.items() if k != "PREFIXGPT_SHAKESPEARE"}  # only what the test passes
    return subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_byte_tokenizer_round_trips_any_text():
    tok = get_tokenizer("byte")
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("byte", 256, 10)
    text = "naïve café — 東京\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) == 24       # ï é: 2 bytes, — 東 京: 3 bytes each
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text  # decodes ids read back from a .bin
    assert tok.encode("To be") == [84, 111, 32, 98, 101]     # ASCII: one token per character
    assert tok.decode(ids[:-3]).endswith("\ufffd")           # a cut multi-byte character: U+FFFD, no error


def test_gpt2_tokenizer_matches_gpt2():
    try:
        tok = get_tokenizer("gpt2")
    except ValueError as e:  # not a skip: the GPT-2 path must be tested
        pytest.fail(f"the GPT-2 tokenizer cannot be tested: {e}")
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("gpt2", 50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode(tok.encode("naïve café — 東京")) == "naïve café — 東京"
    assert 50256 not in tok.encode("a <|endoftext|> b")     # plain text: never the special token


def test_gpt2_tokenizer_without_its_files_says_what_to_do(monkeypatch):
    import tiktoken

    def no_files(name):  # what tiktoken does offline with no cached files
        raise OSError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", no_files)
    with pytest.raises(ValueError, match="TIKTOKEN_CACHE_DIR") as e:
        get_tokenizer("gpt2")
    assert "\n" not in str(e.value) and "byte tokenizer" in str(e.value)


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ValueError, match="byte, gpt2"):
        get_tokenizer("char")


TEXT = "The Eagle is a family-friendly coffee shop near the riverside. naïve café — 東京 🙂\n"


def test_cut_gpt2_vocabulary_keeps_gpt2s_ids_and_encodes_any_text():
    full, cut = get_tokenizer("gpt2"), get_tokenizer("gpt2_2048")
    assert (cut.name, cut.vocab_size, cut.eot_token) == ("gpt2_2048", 2048, 198)
    assert cut.decode([cut.eot_token]) == "\n"               # a completion ends at a newline, as with bytes
    ids = cut.encode(TEXT)
    assert max(ids) < 2048 and cut.decode(ids) == TEXT       # every byte is a token: nothing falls out
    assert full.decode(ids) == TEXT                          # the ids mean what they mean in GPT-2
    assert cut.encode(" the world") == full.encode(" the world") == [262, 995]   # early merges are kept
    # a word GPT-2 learned late (" restaurant" is token 7072) is spelled with earlier tokens
    assert full.encode(" restaurant") == [7072] and len(cut.encode(" restaurant")) > 1
    assert cut.decode(cut.encode(" restaurant")) == " restaurant"


def test_fewer_merges_give_more_tokens_and_all_but_one_merge_is_gpt2():
    full = get_tokenizer("gpt2")
    lengths = [len(get_tokenizer(f"gpt2_{k}").encode(TEXT)) for k in (300, 1024, 2048, 8192)]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    # 50256 tokens = every merge GPT-2 has (only <|endoftext|> is left out): the same encoding
    assert get_tokenizer("gpt2_50256").encode(TEXT) == full.encode(TEXT)


@pytest.mark.parametrize("name", ["gpt2_256", "gpt2_50257", "gpt2_", "gpt2-2048"])
def test_cut_vocabulary_size_out_of_range_is_refused(name):
    with pytest.raises(ValueError, match="257 and 50256|unknown tokenizer"):
        get_tokenizer(name)


def test_prepare_with_a_cut_vocabulary_and_a_bad_name(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("To be, or not to be: that is the question.\n" * 50, encoding="utf-8")
    res = run_prepare("--input", str(src), "--tokenizer", "gpt2_1024", "--out_dir", str(tmp_path / "d"))
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"]) == ("gpt2_1024", 1024)
    assert meta["bytes_per_token"] > 2                       # English in BPE pieces, not one byte a token
    train, val, _ = load_bin(str(tmp_path / "d"))
    assert max(train.max(), val.max()) < 1024
    res = run_prepare("--input", str(src), "--tokenizer", "gpt2_9", "--out_dir", str(tmp_path / "e"))
    assert res.returncode != 0 and res.stderr.count("\n") <= 1 and "257 and 50256" in res.stderr
    assert not (tmp_path / "e").exists()


def test_token_dtype():
    assert token_dtype(256) == token_dtype(50257) == token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_prepare_splits_90_10_and_counts_exactly(tmp_path):
    text = "".join(f"line {i}: é\n" for i in range(100))        # non-ASCII: é is 2 bytes
    meta = prepare(text, ByteTokenizer(), str(tmp_path))
    cut = int(len(text) * 0.9)                                    # split on characters, as nanoGPT
    train, val, meta2 = load_bin(str(tmp_path))
    assert meta == meta2 and meta["dtype"] == "uint16" and train.dtype == val.dtype == np.uint16
    assert meta["train_tokens"] == len(train) == len(text[:cut].encode("utf-8"))
    assert meta["val_tokens"] == len(val) == len(text[cut:].encode("utf-8"))
    assert len(train) + len(val) == len(text.encode("utf-8"))
    assert ByteTokenizer().decode(train) + ByteTokenizer().decode(val) == text  # round trip through the .bin
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "train.bin", "val.bin"]  # no *.tmp left


def test_extra_text_goes_to_train_only(tmp_path):
    text = "To be, or not to be, that is the question.\n" * 10
    meta = prepare(text, ByteTokenizer(), str(tmp_path), extra_texts=["EXTRA one", "EXTRA two"],
                   extra_names=["a.txt", "b.txt"])
    train, val, _ = load_bin(str(tmp_path))
    train_text, val_text = ByteTokenizer().decode(train), ByteTokenizer().decode(val)
    cut = int(len(text) * 0.9)
    assert train_text == text[:cut] + "\nEXTRA one\nEXTRA two" and val_text == text[cut:]
    assert meta["extra_text"] == ["a.txt", "b.txt"]


@pytest.mark.parametrize("vocab,eot", [(2048, 198), (256, 10)])
def test_copy_drills_write_each_span_twice_around_a_separator_no_span_holds(vocab, eot):
    ids = copy_drills(50, vocab, eot, seed=3)
    assert ids == copy_drills(50, vocab, eot, seed=3) != copy_drills(50, vocab, eot, seed=4)
    assert ids[-1] == eot
    lines = [[int(t) for t in ln] for ln in np.split(np.array(ids[:-1]), np.flatnonzero(np.array(ids[:-1]) == eot))]
    lines = [ln[1:] if ln and ln[0] == eot else ln for ln in lines]   # each split after the first starts at its eot
    assert len(lines) == 50
    sep = 255 if vocab > 512 else 31
    for ln in lines:
        assert ln.count(sep) == 1
        first, second = ln[:ln.index(sep)], ln[ln.index(sep) + 1:]
        assert first == second and 4 <= len(first) <= 12 and all(sep < t < vocab and t != eot for t in first)


def test_copy_drills_go_to_train_only_and_meta_counts_them(tmp_path):
    text = "To be, or not to be, that is the question.\n" * 10
    plain = prepare(text, ByteTokenizer(), str(tmp_path / "a"))
    meta = prepare(text, ByteTokenizer(), str(tmp_path / "b"), drills=20)
    (a_train, a_val, _), (b_train, b_val, _) = load_bin(str(tmp_path / "a")), load_bin(str(tmp_path / "b"))
    assert list(b_val) == list(a_val) and list(b_train[:len(a_train)]) == list(a_train)
    assert len(b_train) == len(a_train) + 1 + len(copy_drills(20, 256, 10))
    assert meta["copy_drills"] == 20 and "copy_drills" not in plain


def test_prepare_refuses_an_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        prepare(" \n", ByteTokenizer(), str(tmp_path))


def test_prepare_cli_writes_the_three_files(tmp_path):
    src, extra = tmp_path / "in.txt", tmp_path / "extra.txt"
    src.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    extra.write_text("name[The Eagle] The Eagle is a pub.\n", encoding="utf-8")
    for module in (False, True):                                  # as a script and as `python -m`
        out = tmp_path / f"out{int(module)}"
        res = run_prepare("--input", str(src), "--out_dir", str(out), "--extra_text", str(extra), module=module)
        assert res.returncode == 0, res.stderr
        assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        assert meta["source"] == str(src) and meta["extra_text"] == [str(extra)]
        assert meta["train_tokens"] == 774 + 1 + 36 and meta["val_tokens"] == 86   # 860 bytes 90/10, + "\n" + extra


def test_prepare_cli_missing_input_is_one_line_naming_it(tmp_path):
    res = run_prepare("--input", str(tmp_path / "nope.txt"), "--out_dir", str(tmp_path / "out"))
    assert res.returncode != 0 and res.stderr.count("\n") == 1
    assert "input file not found" in res.stderr and "nope.txt" in res.stderr
    assert not (tmp_path / "out").exists()


def test_load_bin_names_the_command_that_makes_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json not found.*data/shakespeare/prepare.py"):
        load_bin(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        load_bin(str(tmp_path / "missing_folder"))
    prepare("abcdefghij" * 10, ByteTokenizer(), str(tmp_path))
    (tmp_path / "val.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"val.bin is empty.*data/shakespeare/prepare.py"):
        load_bin(str(tmp_path))


def test_offline_fallback_corpus_is_always_there():
    text = fallback_corpus()
    assert isinstance(text, str) and len(text) > 100_000 and "class" in text
    assert text == fallback_corpus()  # deterministic: the same corpus on every run


def test_atomic_writes(tmp_path):
    from data.files import write_atomic, write_json
    write_atomic(str(tmp_path / "a.txt"), "naïve\n")
    write_json(str(tmp_path / "m.json"), {"k": "é"})
    assert (tmp_path / "a.txt").read_bytes() == "naïve\n".encode() and sorted(os.listdir(tmp_path)) == ["a.txt", "m.json"]
    # download_once is tested against a real local server in tests/test_downloads.py


# ---------------------------------------------------------------- bad values, folders, bytes: one line each

@pytest.mark.parametrize("value,message", [("0", "must be between 0 and 1"), ("1", "must be between 0 and 1"),
                                           ("1.5", "must be between 0 and 1"), ("nan", "must be between 0 and 1"),
                                           ("ten", "invalid fraction value: 'ten'")])
def test_prepare_cli_refuses_a_bad_val_fraction_in_one_line(tmp_path, value, message):
    src = tmp_path / "in.txt"
    src.write_text("To be, or not to be.\n" * 20, encoding="utf-8")
    res = run_prepare("--input", str(src), "--out_dir", str(tmp_path / "out"), "--val_fraction", value)
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and "usage:" not in res.stderr
    assert f"argument --val_fraction: {message}" in res.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_cli_folder_or_non_utf8_input_is_one_line_naming_it(tmp_path):
    good, folder = tmp_path / "good.txt", tmp_path / "folder"
    good.write_text("To be, or not to be.\n" * 20, encoding="utf-8")
    folder.mkdir()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("To be,\nor not to be, naïve.\n".encode("latin-1"))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)                  # a NUL at byte 0
    for args, message in ((["--input", str(folder)], f"--input {folder} is a folder"),
                          (["--input", str(good), "--extra_text", str(folder)], f"--extra_text {folder} is a folder"),
                          (["--input", str(latin1)], f"{latin1}:2: not UTF-8 text (byte 23 is 0xef)"),
                          (["--input", str(good), "--extra_text", str(binary)], f"{binary}:1: not UTF-8 text (byte 0")):
        res = run_prepare(*args, "--out_dir", str(tmp_path / "out"))
        assert res.returncode != 0 and res.stderr.count("\n") == 1, res.stderr
        assert message in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("meta,message", [
    ("{not json", "meta.json is damaged"),
    (b"\xff\xfe{}", "meta.json is damaged"),
    ('{"tokenizer": "byte", "vocab_size": 256}', "meta.json lacks dtype"),
    ("[1, 2]", "meta.json lacks tokenizer, vocab_size, dtype"),
    ('{"tokenizer": "byte", "vocab_size": 256, "dtype": "uint99"}', "unknown dtype 'uint99'"),
])
def test_load_bin_with_a_damaged_meta_json_says_to_prepare_again(tmp_path, meta, message):
    prepare("abcdefghij" * 10, ByteTokenizer(), str(tmp_path))
    path = tmp_path / "meta.json"
    path.write_bytes(meta) if isinstance(meta, bytes) else path.write_text(meta, encoding="utf-8")
    with pytest.raises(ValueError) as e:                          # train.py's main_guard prints it as one line
        load_bin(str(tmp_path))
    assert message in str(e.value) and "data/shakespeare/prepare.py" in str(e.value) and "\n" not in str(e.value)


def test_load_bin_with_a_folder_for_a_bin_is_one_line(tmp_path):
    prepare("abcdefghij" * 10, ByteTokenizer(), str(tmp_path))
    os.remove(tmp_path / "val.bin")
    (tmp_path / "val.bin").mkdir()
    with pytest.raises(ValueError, match=r"val.bin is a folder.*data/shakespeare/prepare.py") as e:
        load_bin(str(tmp_path))
    assert "\n" not in str(e.value)
