"""demo.py, the main job: what --long and --sst2 set, settings refused before any step runs, and --base
tuning an existing base (no corpus, no pretraining) over two seeds, end to end in the quick form on small
local data, its table in mean ± std (metrics.mean_std)."""
import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
import demo
from model import GPT, GPTConfig
from prefixgpt.checkpoint import save_checkpoint
from prefixgpt.cli import UsageError


def test_sst2_and_long_set_their_runs_except_what_was_given():
    default, long, sst2 = demo.settings([]), demo.settings(["--long"]), demo.settings(["--sst2"])
    assert (default.pretrain_iters, default.steps, default.sentiment_steps, default.seeds) == (1000, 300, 150, [1337])
    assert (default.mr_format, default.invented_names, default.facts_copies, default.test_prompts) == ("spaced", 10, 1, 100)
    assert (long.pretrain_iters, long.steps, long.sentiment_steps, long.test_prompts) == (4000, 1200, 400, 100)
    assert (sst2.pretrain_iters, sst2.tasks, sst2.sentiment_steps, sst2.seeds, sst2.out_dir) == (
        4000, ["sentiment"], 3200, [0, 1, 2], "out/demo_sst2")
    mine = demo.settings(["--sst2", "--seeds=7", "--sentiment_steps=50", "--out_dir=elsewhere"])
    assert (mine.seeds, mine.sentiment_steps, mine.out_dir, mine.pretrain_iters) == ([7], 50, "elsewhere", 4000)


def test_each_variant_has_its_own_folder_and_none_replaces_another_s_results(tmp_path, monkeypatch):
    """make demo, --long, --sst2 and --quick write four folders; a run into a folder that holds another
    run's results (or files no demo wrote) is refused before any step runs, unless --overwrite; a rerun of
    the same settings rebuilds its own folder."""
    assert [demo.settings(f).out_dir for f in ([], ["--long"], ["--sst2"], ["--quick"])] == [
        "out/demo", "out/demo_long", "out/demo_sst2", "out/demo_quick"]
    ran = []
    monkeypatch.setattr(demo, "run", lambda cmd: ran.append(cmd) or (_ for _ in ()).throw(SystemExit("stop")))
    out = tmp_path / "demo"
    with pytest.raises(SystemExit, match="stop"):           # make demo's run claims its folder, then runs
        demo.main([f"--out_dir={out}"])
    (out / "e2e_prefix").mkdir()
    (out / "e2e_prefix" / "prefix.pt").write_bytes(b"make demo's prefix")
    ran.clear()
    with pytest.raises(UsageError, match=r"holds another demo run's results \(--pretrain_iters=1000, --steps=300"):
        demo.main([f"--out_dir={out}", "--long"])
    assert ran == [] and (out / "e2e_prefix" / "prefix.pt").read_bytes() == b"make demo's prefix"
    with pytest.raises(SystemExit, match="stop"):           # the same settings again: its own folder, rebuilt
        demo.main([f"--out_dir={out}"])
    with pytest.raises(SystemExit, match="stop"):           # --overwrite: asked for
        demo.main([f"--out_dir={out}", "--long", "--overwrite"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="files that no demo run wrote"):
        demo.main([f"--out_dir={other}"])


def row(task, metric, base, prefix, ft, **more):
    """A demo table row as demo.main builds it: one seed, test measures for the base, the prefix and FT."""
    pick = lambda v, k: {"test": v, **{key: val[k] for key, val in more.items() if key != "majority"}}  # noqa: E731
    r = {"task": task, "steps": 10, "trainable": 100, "percent": 1.0, "base": 2.0, "prefix": [1.5], "ft": [1.0],
         "metric": metric, "base_test": pick(base, 0), "test": [[pick(prefix, 1), pick(ft, 2)]]}
    if "majority" in more:
        r["majority"] = more["majority"]
    return r


def test_gap_closed_is_measured_on_the_test_measure_and_a_row_that_fails_says_so():
    """The headline agrees with its test column: sentiment's gap is measured on accuracy, not on the label
    loss that learning the labels' words alone moves, and a prefix at the commonest label's accuracy reads
    as chance in its row, however far its label loss fell;
    a generation prefix that does not beat the base alone on BLEU says so in the table."""
    good = row("e2e", "BLEU-4", 10.0, 30.0, 40.0, **{k: (1, 2, 3) for k in
                                                  ("BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr", "facts", "names",
                                                   "wrong", "added")},
               by_attribute=({}, {"name": 0.0, "food": 90.0}, {"name": 0.0, "food": 95.0}))
    chance = row("sentiment", "accuracy", 50.9, 50.9, 80.0, accuracy=(50.9, 50.9, 80.0), label_loss=(4.3, 0.70, 0.6),
                 majority=50.9)
    worse = row("review", "test loss", 4.0, 4.2, 3.5)
    table = demo.results_table([good, chance, worse], [1337])
    lines = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0] in
             ("e2e", "sentiment", "review")}
    assert lines["e2e"].endswith("67%")                       # (30 - 10) / (40 - 10) of the BLEU gain
    assert lines["sentiment"].endswith(" 0%")                 # (50.9 - 50.9) / (80 - 50.9), though its label loss fell
    assert "label loss (nats, moved by learning the labels' words alone) base / prefix / FT 4.300 / 0.700 / 0.600" in table
    assert lines["review"].endswith("-40%")                   # (4.0 - 4.2) / (4.0 - 3.5): worse than the base
    assert "sentiment: NO BETTER THAN CHANCE: prefix accuracy 50.9% vs 50.9%" in table
    assert "review: BELOW THE BASE on test loss" in table and "e2e: BELOW" not in table
    assert "facts carried 1% / 2% / 3%" in table and "CIDEr 1.000 / 2.000 / 3.000" in table
    assert "e2e, the prefix's facts stated by attribute: name 0%, food 90%" in table
    assert demo.verdict(good) == "" and demo.verdict(row("s", "accuracy", 50, 70, 80, accuracy=(50, 70, 80),
                                                         majority=50.0)) == ""


def test_generation_report_scores_outputs_against_every_reference(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text('{"prompt": "name[Zizzi], food[Thai] ||", "completion": " Zizzi serves Thai food."}\n'
                    '{"prompt": "name[Zizzi], food[Thai] ||", "completion": " Thai food at Zizzi."}\n')
    got = demo.generation_report([{"prompt": "name[Zizzi], food[Thai] ||", "completion": " Zizzi serves Thai food."}],
                                 str(test))
    assert got["test"] == got["BLEU"] == pytest.approx(100.0) and got["facts"] == got["names"] == 100.0
    assert got["ROUGE-L"] == pytest.approx(100.0)


@pytest.mark.parametrize("flags,needle", [
    (["--mr_format=csv"], "must be one of"),
    (["--seeds="], "at least one"), (["--tasks="], "at least one"), (["--seeds=3,3"], "repeats a seed"),
    (["--base=no/such/best.pt"], "no such file"), (["--tasks=e2e,poetry"], "must be one of")])
def test_bad_settings_stop_the_demo_before_any_step_runs(flags, needle, monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cmd: ran.append(cmd) or "")
    with pytest.raises(UsageError, match=needle):
        demo.main(flags)
    assert ran == []


def e2e_csv(n_mrs: int) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["mr", "ref"])
    for i in range(n_mrs):
        mr = f"name[Place {i}], food[{('Thai', 'French')[i % 2]}]"
        w.writerows([[mr, f"Place {i} serves {('Thai', 'French')[i % 2]} food."], [mr, f"Try Place {i}."]])
    return out.getvalue()


def sst2_dir(tmp_path):
    """A folder of SST-2's two TSV files: 1,100 train sentences long enough for the review task, 2 dev."""
    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    words = ["a", "fine", "film", "about", "love", "and", "loss", "that", "never", "quite", "works", "."]
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "".join(
        f"{' '.join(words[:8 + i % 4])} {i}\t{i % 2}\n" for i in range(1100)), encoding="utf-8")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\na dull , tired film .\t0\na warm and funny film .\t1\n",
                                  encoding="utf-8")
    return sst2


@pytest.mark.slow
def test_base_and_seeds_tune_an_existing_base_and_report_mean_and_std(tmp_path):
    """--base: no corpus is built and nothing is pretrained; --seeds=0,1: a prefix and a fine-tuning per seed,
    in folders of their own, and the table's prefix, FT and gap columns as mean ± std of the two."""
    (tmp_path / "devset.csv").write_text(e2e_csv(60), encoding="utf-8")
    sst2 = sst2_dir(tmp_path)
    base = tmp_path / "base" / "best.pt"
    base.parent.mkdir()
    save_checkpoint(str(base), GPT(GPTConfig(block_size=160, vocab_size=256, n_layer=1, n_head=2, n_embd=16)), "byte")
    env = {**os.environ, "PREFIXGPT_E2E": str(tmp_path / "devset.csv"), "PREFIXGPT_SST2": str(sst2)}
    res = subprocess.run([sys.executable, "demo.py", "--quick", f"--base={base}", "--tasks=sentiment", "--seeds=0,1",
                          f"--out_dir={tmp_path}/out", f"--data_dir={tmp_path}/data", "--mr_format=brackets",
                          "--invented_names=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "train.py" not in res.stdout and not (tmp_path / "data" / "demo").exists()   # nothing pretrained
    e2e_meta = json.loads((tmp_path / "data" / "e2e" / "meta.json").read_text())
    assert (e2e_meta["mr_format"], e2e_meta["invented_names"]) == ("brackets", 2)   # passed to prepare.py
    for seed in (0, 1):
        assert (tmp_path / "out" / f"sentiment_prefix_s{seed}" / "prefix.pt").is_file()
        assert (tmp_path / "out" / f"sentiment_ft_s{seed}" / "model.pt").is_file()
    assert res.stdout.count("--with_base") == 1          # the base alone is scored once, not once a seed
    row = re.search(r"sentiment .*", res.stdout.split("===")[-1]).group(0)
    pm = r"\d+\.\d+ ± \d+\.\d+"
    assert re.search(rf"\([\d.]+%\)\s+\d+\.\d+\s+{pm}\s+{pm}\s+accuracy\s+\d+\.\d+\s+{pm}\s+{pm}\s+(-?\d+ ± \d+%|n/a)$",
                     row), row
    assert re.search(rf"label loss .* base / prefix / FT [\d.]+ / {pm} / {pm}", res.stdout)
    assert "mean ± std over seeds 0, 1" in res.stdout


def test_a_gpt2_base_gets_settings_for_a_cpu_and_a_flag_still_wins():
    cfg = demo.settings(["--base=gpt2"])
    assert (cfg.steps, cfg.sentiment_steps, cfg.test_prompts, cfg.ft_learning_rate) == (40, 40, 30, 5e-5)
    assert demo.settings(["--base=gpt2-medium", "--steps=7"]).steps == 7
    with pytest.raises(UsageError, match="a GPT-2 name such as gpt2, or a Hugging Face GPT-2 folder"):
        demo.settings(["--base=gpt3"])


@pytest.mark.slow
def test_the_main_job_runs_on_a_gpt2_folder_with_gpt2s_tokenizer(tmp_path):
    """demo.py --base=<a Hugging Face GPT-2 folder>: no corpus and no pretraining, the three tasks tuned and
    scored with GPT-2's tokenizer, the same table (tiny random GPT-2: the numbers mean nothing)."""
    from test_gpt2 import gpt2_vocab_folder
    folder = gpt2_vocab_folder(tmp_path / "gpt2", n_positions=160)   # the demo's context of 160 tokens
    (tmp_path / "devset.csv").write_text(e2e_csv(60), encoding="utf-8")
    sst2 = sst2_dir(tmp_path)
    env = {**os.environ, "PREFIXGPT_E2E": str(tmp_path / "devset.csv"), "PREFIXGPT_SST2": str(sst2)}
    res = subprocess.run([sys.executable, "demo.py", "--quick", f"--base={folder}", f"--out_dir={tmp_path}/out",
                          f"--data_dir={tmp_path}/data"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "train.py" not in res.stdout and f"--base={folder}" in res.stdout
    table = res.stdout.split("=== one frozen base")[-1]
    for task in ("e2e", "sentiment", "review"):
        assert re.search(rf"\n{task}\s+[\d,]+ \([\d.]+%\)", table), table
    assert (tmp_path / "out" / "report.html").is_file()
