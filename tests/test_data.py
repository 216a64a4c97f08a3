"""data/tokenizer.py, data/shakespeare/prepare.py, data/bins.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data.bins import load_bin
from data.shakespeare.prepare import fallback_corpus, prepare
from data.tokenizer import ByteTokenizer, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "naïve café — 東京\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) == 24
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.encode("To be") == [84, 111, 32, 98, 101]  # ASCII: one token per character


def test_gpt2_tokenizer_matches_gpt2():
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        pytest.fail("set TIKTOKEN_CACHE_DIR to a folder with tiktoken's GPT-2 files (CI uses ../shared/tiktoken_cache)")
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode(tok.encode("naïve café")) == "naïve café"
    assert tok.eot_token == 50256 and tok.vocab_size == 50257


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ValueError, match="byte, gpt2"):
        get_tokenizer("char")


def test_prepare_splits_90_10_and_counts_exactly(tmp_path):
    text = "".join(f"line {i}: é\n" for i in range(100))            # non-ASCII: 2 bytes for é
    meta = prepare(text, ByteTokenizer(), str(tmp_path), extra_texts=["EXTRA"], extra_names=["x.txt"])
    cut = int(len(text) * 0.9)
    train, val, meta2 = load_bin(str(tmp_path))
    assert meta == meta2
    assert meta["train_tokens"] == len(train) == len((text[:cut] + "\nEXTRA").encode("utf-8"))
    assert meta["val_tokens"] == len(val) == len(text[cut:].encode("utf-8"))
    assert train.dtype == np.uint16
    assert bytes(train.tolist()).decode("utf-8").endswith("\nEXTRA")   # extra text: train only
    assert "EXTRA" not in bytes(val.tolist()).decode("utf-8")
    assert bytes(train.tolist()).decode("utf-8")[:cut] == text[:cut]


def test_prepare_cli_writes_the_files_and_refuses_a_missing_input(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "data/shakespeare/prepare.py", "--input", str(src), "--out_dir", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
    assert json.loads((out / "meta.json").read_text())["source"] == str(src)
    res = subprocess.run([sys.executable, "data/shakespeare/prepare.py", "--input", str(tmp_path / "nope.txt"),
                          "--out_dir", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "input file not found" in res.stderr and "nope.txt" in res.stderr


def test_load_bin_names_the_command_that_makes_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="data/shakespeare/prepare.py"):
        load_bin(str(tmp_path))


def test_offline_fallback_corpus_is_always_there():
    text = fallback_corpus()
    assert len(text) > 100_000 and "class" in text
