"""compare.py: the family side by side, end to end on a tiny base; a rerun resumes instead of redoing; SST-2's
scores; cells keyed by base and task; the base-budget axis."""
import json
import re
import sys
from dataclasses import replace

import pytest
import torch

from conftest import run, torchrun
from data.shakespeare.prepare import prepare
from data.sst2.prepare import write_task
from data.tasks import TaskExample, demonstrations, fewshot_heads
from data.tokenizer import ByteTokenizer
from experiments import compare
from model import GPT
from prefixgpt.checkpoint import load_model, save_checkpoint, weights_fingerprint
from prefixgpt.cli import main_guard, parse
from prefixgpt.runtime import setup_runtime


@pytest.mark.slow
def test_compare_quick_runs_every_method_and_a_rerun_skips_finished_cells(tmp_path):
    corpus = "".join(f"name[{n}] is a {k} by the river.\n" for n in ("Zizzi", "Aromi", "Loch Fyne", "Strada")
                     for k in ("pub", "coffee shop", "restaurant")) * 30
    prepare(corpus, ByteTokenizer(), str(tmp_path / "corpus"))
    run("train.py", f"--data_dir={tmp_path}/corpus", f"--out_dir={tmp_path}/base", "--n_layer=2", "--n_head=2",
        "--n_embd=32", "--block_size=96", "--batch_size=4", "--max_iters=20", "--eval_interval=20", "--eval_iters=2",
        "--learning_rate=3e-3", "--plot=false", "--device=cpu")
    task = tmp_path / "e2e"
    task.mkdir()
    for split, names in (("train", ("Zizzi", "Aromi", "Strada") * 20), ("val", ("Loch Fyne", "Zizzi")),
                         ("test", ("Aromi", "Loch Fyne"))):
        rows = [{"prompt": f"name[{n}], eatType[pub] ||", "completion": f" {n} is a pub."} for n in names]
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [f"--base={tmp_path}/base/best.pt", f"--corpus={tmp_path}/corpus", f"--task_dir={task}",
            f"--out_dir={tmp_path}/cmp", "--methods=prefix,prompt,lora,adapter,bitfit,ft-top2,ft,fewshot",
            "--quick", "--seeds=0", "--steps=6", "--batch_size=4", "--n_prefix=3", "--p_sweep=1,3", "--test_prompts=2",
            "--device=cpu"]
    first = run("experiments/compare.py", *args, timeout=600)
    table = (tmp_path / "cmp" / "results.md").read_text()
    for method in ("base alone", "prefix", "prompt", "lora", "adapter", "bitfit", "ft-top2", "| ft |", "fewshot"):
        assert method in table, table
    # the low-data curves and the prefix-length sweep as numbers too: sizes 50 and all, P 1 and 3
    assert "| val loss | 50 examples | all examples |" in table and "| BLEU-4 | 50 examples | all examples |" in table
    assert "| prefix length P | 1 | 3 |" in table
    # E2E's five metrics and the facts carried, each a column, with the paper's numbers beside as theirs
    assert "| BLEU-4 | NIST | METEOR | ROUGE-L | CIDEr | facts % | names % |" in table
    lines = [line for line in table.splitlines() if line.startswith(("| base alone |", "| prefix |"))][:2]
    assert all(len(re.findall(r"\| \d+\.\d+", line)) >= 9 for line in lines), lines   # no n/a in a fresh run
    assert "Li & Liang (GPT-2 medium, E2E's official test; their numbers, not these): prefix BLEU 69.7" in table
    assert "| method | % of the gap closed |" in table and "| lora |" in table.split("% of the gap closed")[1]
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    runs = [r for r in rows if r["kind"] == "run"]
    # 7 trained methods x 1 seed x 2 sizes, the P sweep's extra length, one fewshot row
    assert len(runs) == 7 * 1 * 2 + 1 + 1
    assert all(r["forgetting"] == runs[0]["forgetting"] for r in runs if r["method"] in ("prefix", "prompt"))
    assert (tmp_path / "cmp" / "results.png").stat().st_size > 0
    again = run("experiments/compare.py", *args, timeout=600)
    assert "so far" in first.stdout and "so far" not in again.stdout          # nothing ran the second time
    assert (tmp_path / "cmp" / "results.md").read_text() == table


# -- fast: tiny bases written directly (no pretraining), tiny task files -------------------------------

REVIEWS = [("a fine film", 1), ("dull and long", 0), ("warm and funny", 1), ("a mess", 0), ("I loved it", 1),
           ("flat acting", 0), ("great fun", 1), ("too slow", 0)]


def tiny_base(tmp_path, tiny_config, name, seed=0, iters=0):
    """A random base saved as train.py would save it; byte tokens and a context of 64, where a review,
    its label and a 2-slot prefix fit."""
    torch.manual_seed(seed)
    model = GPT(replace(tiny_config, vocab_size=256, block_size=64))
    path = tmp_path / name / "best.pt"
    path.parent.mkdir()
    save_checkpoint(str(path), model, "byte", iter_num=iters)
    return str(path)


@pytest.fixture
def sst2_setup(tmp_path, tiny_config):
    """A base, a corpus, and an SST-2-shaped task folder (prepare.py's own writer): the --flags for them."""
    prepare("the film was good and the film was bad.\n" * 80, ByteTokenizer(), str(tmp_path / "corpus"))
    write_task({"train": REVIEWS * 3, "val": REVIEWS[:6], "test": REVIEWS}, str(tmp_path / "sst2"), {})
    return [f"--base={tiny_base(tmp_path, tiny_config, 'base')}", f"--corpus={tmp_path}/corpus", "--task=sst2",
            f"--task_dir={tmp_path}/sst2", "--seeds=0", "--sizes=0", "--n_prefix=2", "--p_sweep=2",
            "--steps=3", "--batch_size=4", "--lr_grid=false", "--corpus_tokens=1000", "--device=cpu"]


@pytest.mark.slow
def test_sst2_cells_score_accuracy_and_macro_f1_and_the_table_shows_them(sst2_setup, tmp_path):
    compare.main(sst2_setup + [f"--out_dir={tmp_path}/cmp", "--methods=prefix,lora,fewshot"])
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    assert {r["method"] for r in rows} == {"prefix", "lora", "fewshot"}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and "bleu" not in r, r
    header = (tmp_path / "cmp" / "results.md").read_text().splitlines()[0]
    assert "| accuracy | macro-F1 |" in header and "BLEU" not in header, header


@pytest.mark.parametrize("cap,n", [(3, 3), (0, len(REVIEWS))])
def test_test_examples_caps_the_classified_test_rows(sst2_setup, cap, n):
    cfg = compare.CompareConfig()
    parse(sst2_setup + [f"--test_examples={cap}"], cfg)
    labels = compare.task_labels("sst2", cfg.task_dir)
    b = compare.load_base(cfg, setup_runtime("cpu", "float32", 0), cfg.base, cfg.task_dir, labels)
    assert len(b.data["y_true"]) == n and all(len(c) == n for c in b.data["candidates"])


def test_fewshot_demonstrations_on_sst2_are_balanced_between_the_labels():
    tok = ByteTokenizer()
    labels = [" negative", " positive"]
    # the train file starts with three positives: taking the first demonstrations would show no negative
    train = [TaskExample(tok.encode(f"{s} Sentiment:{labels[y]}\n"), len(f"{s} Sentiment:"), f"{s} Sentiment:",
                         labels[y]) for s, y in [("yes", 1), ("good", 1), ("fine", 1), ("bad", 0), ("no", 0)]]
    rounds = demonstrations(train, labels)
    assert all(sorted(d.completion for d in r) == labels for r in rounds) and len(rounds) == 2
    assert rounds[0][-1].completion != rounds[1][-1].completion    # the order turns: no label is always last
    for room in range(20, 120):   # whatever the room, whole rounds only: as many of each label
        heads, used = fewshot_heads([15], rounds, tok.encode("Say.\n"), tok.eot_token, room)
        text = tok.decode(heads[0])
        assert text.count(" positive") == text.count(" negative") == used[0] // 2, (room, text)


def test_a_classification_task_needs_its_labels_and_a_generation_task_refuses_them(tmp_path):
    write_task({"train": REVIEWS, "val": REVIEWS, "test": REVIEWS}, str(tmp_path / "sst2"), {})
    assert compare.task_labels("sst2", str(tmp_path / "sst2")) == [" negative", " positive"]
    with pytest.raises(ValueError, match="--task=sst2"):
        compare.task_labels("e2e", str(tmp_path / "sst2"))
    with pytest.raises(ValueError, match="labels"):
        compare.task_labels("sst2", str(tmp_path))


@pytest.mark.slow
def test_cells_are_keyed_by_task_and_base_so_a_second_base_in_the_same_out_dir_runs_its_own(sst2_setup, tmp_path,
                                                                                             tiny_config):
    out = f"--out_dir={tmp_path}/cmp"
    other = tiny_base(tmp_path, tiny_config, "other", seed=1)   # same shape and tokenizer, other weights
    compare.main(sst2_setup + [out, "--methods=prefix"])
    compare.main(sst2_setup + [out, "--methods=prefix", f"--base={other}"])
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    prints = {weights_fingerprint(load_model(p)[0]) for p in (sst2_setup[0].split("=", 1)[1], other)}
    assert len(rows) == 2 and {r["base_fingerprint"] for r in rows} == prints and len(prints) == 2
    assert all(r["base_fingerprint"] in r["cell"] and "|sst2|" in r["cell"] for r in rows)
    compare.main(sst2_setup + [out, "--methods=prefix", f"--base={other}"])   # and each base's cells are reused
    assert sum(1 for _ in open(tmp_path / "cmp" / "results.jsonl")) == 2


@pytest.mark.slow
def test_two_bases_give_the_base_budget_tables_a_line_each_and_a_column_each(sst2_setup, tmp_path, tiny_config):
    bases = [sst2_setup[0].split("=", 1)[1], tiny_base(tmp_path, tiny_config, "longer", seed=1, iters=40)]
    # --sizes=0 and --p_sweep=n_prefix: the main grid's cells are the first base's, run once
    compare.main(sst2_setup + [f"--out_dir={tmp_path}/cmp", "--methods=prefix,lora,ft", f"--bases={','.join(bases)}"])
    md = (tmp_path / "cmp" / "results.md").read_text()
    tables = [t.splitlines() for t in md[md.index("Base budget"):].split("\n\n") if t.startswith("| ")]
    assert [t[0] for t in tables] == [
        "| base | pretraining iterations | corpus val loss | base alone: val loss |",
        "| val loss | 0 iterations | 40 iterations |",          # a column a base, named by its pretraining
        "| accuracy | 0 iterations | 40 iterations |",          # the task's test score beside the loss
        "| % of the base→FT gap closed | 0 iterations | 40 iterations |"]
    assert [line.split(" | ")[0][2:] for line in tables[0][2:]] == bases and "| 40 |" in tables[0][3]
    assert [line.split(" | ")[0][2:] for line in tables[1][2:]] == ["prefix", "lora", "ft"]
    assert [line.split(" | ")[0][2:] for line in tables[3][2:]] == ["prefix", "lora"]   # ft closes all of its own
    for line in tables[3][2:]:   # ft beats a random base within 3 steps: every cell is a share, a number
        for cell in line.strip("| ").split(" | ")[1:]:
            float(cell.split(" ± ")[0])
    assert sum(1 for _ in open(tmp_path / "cmp" / "results.jsonl")) == 3 * 2   # 3 methods on each of 2 bases
    assert (tmp_path / "cmp" / "results_bases.png").stat().st_size > 0


def test_the_gap_closed_is_the_share_of_base_minus_ft_per_seed():
    rows = [{"method": "ft", "seed": 0, "val_loss": 1.0}, {"method": "prefix", "seed": 0, "val_loss": 1.5},
            {"method": "ft", "seed": 1, "val_loss": 1.2}, {"method": "prefix", "seed": 1, "val_loss": 1.2},
            {"method": "prefix", "seed": 2, "val_loss": 1.9}]   # seed 2 has no ft: no gap to compare with
    assert compare.gaps_per_seed(rows, "prefix", 2.0) == [50.0, 100.0]
    assert compare.gaps_per_seed(rows, "prefix", 0.9) == []          # ft never beat the base: no gap


def test_a_missing_bases_entry_is_one_line_before_any_cell_runs(sst2_setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare.py", *sst2_setup, f"--out_dir={tmp_path}/cmp", "--methods=prefix",
                                      f"--bases={sst2_setup[0].split('=', 1)[1]},{tmp_path}/no_such/best.pt"])
    with pytest.raises(SystemExit) as exit_:
        main_guard(compare.main)   # as the script runs it
    out, err = capsys.readouterr()
    assert exit_.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--bases" in err and "no_such/best.pt" in err and "not found" in err, err
    assert "so far" not in out and not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_init_text_starts_prefixes_from_words_and_keeps_its_own_cells(sst2_setup, tmp_path, monkeypatch):
    """--init=text: a prefix starts as the base's own keys/values of INIT_TEXT's words (the cell passes the
    words to tuning.make_prefix), and its cells are keyed apart from random-init ones."""
    seen = []
    real = compare.make_prefix
    monkeypatch.setattr(compare, "make_prefix", lambda s, *a: seen.append((s.init, s.init_text)) or real(s, *a))
    out = f"--out_dir={tmp_path}/cmp"
    compare.main(sst2_setup + [out, "--methods=prefix"])
    compare.main(sst2_setup + [out, "--methods=prefix", "--init=text"])
    assert seen == [("random", compare.INIT_TEXT["sst2"]), ("text", compare.INIT_TEXT["sst2"])]
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    assert len(rows) == 2 and "|prefix|init=text|" in rows[1]["cell"] and "init=text" not in rows[0]["cell"]
    compare.main(sst2_setup + [out, "--methods=prefix", "--init=text"])       # reused, not rerun
    assert len(seen) == 2


@pytest.mark.slow
def test_a_cell_scored_on_other_val_or_test_examples_is_run_again_not_reused(sst2_setup, tmp_path):
    """The key holds how many val and test examples scored the row: a rerun with another count must not
    print the old row as if it had been scored on the new one."""
    out = f"--out_dir={tmp_path}/cmp"
    for extra in ([], ["--val_examples=3"], ["--test_examples=4"], ["--test_examples=4"]):
        compare.main(sst2_setup + [out, "--methods=prefix"] + extra)
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    assert len(rows) == 3 and len({r["cell"] for r in rows}) == 3     # the last run reused the third's row
    assert "|val=3+label_loss|" in rows[1]["cell"] and "|test=4|" in rows[2]["cell"]


@pytest.mark.slow
def test_the_cells_key_holds_the_room_the_sweeps_longest_prefix_leaves(sst2_setup, tmp_path):
    """Every example must fit beside the grid's longest prefix, so --p_sweep decides which val examples
    (and how much of each) score every cell: E2E's 200 val completions gave the base alone 2.153 with a
    sweep up to P=10 and 2.184 up to P=50. A cell run under another sweep was scored on another val set
    and must run again, not be read back as if it were the same measurement."""
    out = f"--out_dir={tmp_path}/cmp"
    for sweep in ("2", "2,20", "2,20"):
        compare.main(sst2_setup + [out, "--methods=prefix", f"--p_sweep={sweep}"])
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    two = [r for r in rows if r["n_prefix"] == 2]
    assert len(two) == 2 and "|room=62" in two[0]["cell"] and "|room=44" in two[1]["cell"], [r["cell"] for r in rows]
    assert len(rows) == 3    # the third invocation read its cells back: P=2 and P=20 at room 44


@pytest.mark.parametrize("best, bracket, picked, tried", [
    (0.5, True, 0.3, [0.01, 0.03, 0.1, 0.3, 1.0]),      # past the top: 0.3 and 1 tried, 1 is worse
    (0.05, True, 0.03, [0.01, 0.03, 0.1]),              # inside the grid: nothing more to try
    (0.001, True, 0.001, [0.01, 0.03, 0.1, 0.003, 0.001, 0.0003]),   # past the bottom, two steps down
    (100.0, True, 3.0, [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]),           # three steps out at most
    (0.5, False, 0.1, [0.01, 0.03, 0.1]),               # --lr_bracket=false: the grid alone
])
def test_a_learning_rate_picked_at_the_grids_edge_is_bracketed(best, bracket, picked, tried, monkeypatch):
    """The val loss is a bowl in log(lr) around `best`: the pick must be the grid's 1-3-10 rate nearest it
    (within MAX_EXTRA_RATES more), and only the rates needed to show that are run."""
    import math
    from experiments import compare
    runs = []

    def fake_cell(cfg, rt, b, results, method, lr, seed, size, p, t0):
        runs.append(lr)
        return {"val_loss": 1 + (math.log10(lr) - math.log10(best)) ** 2}
    monkeypatch.setattr(compare, "cell", fake_cell)
    cfg = compare.CompareConfig(lr_bracket=bracket)
    assert compare.pick_lr(cfg, None, None, None, "prefix", 0) == picked
    assert runs == tried


def test_a_classification_task_picks_its_rate_on_the_val_label_loss(monkeypatch):
    """SST-2's val loss falls as the rate rises (the answer's format is learnt sooner) while the label is
    chosen no better, and a model that always answers the majority label wins on val accuracy: the pick
    must follow the label loss, -log p(true label) among the labels."""
    from experiments import compare
    label_loss = {3e-4: 0.69, 1e-3: 0.64, 3e-3: 0.61, 1e-2: 0.70, 3e-2: 0.72}
    accuracy = {3e-4: 0.57, 1e-3: 0.55, 3e-3: 0.60, 1e-2: 0.57, 3e-2: 0.57}   # 0.57: all majority

    def fake_cell(cfg, rt, b, results, method, lr, seed, size, p, t0):
        return {"val_loss": 0.1 / lr ** 0.1, "val_label_loss": label_loss[lr], "val_accuracy": accuracy[lr]}
    monkeypatch.setattr(compare, "cell", fake_cell)
    assert compare.pick_lr(compare.CompareConfig(), None, None, None, "ft", 0) == 3e-3   # then 1e-2 is worse
    monkeypatch.setattr(compare, "cell", lambda *a: {"val_loss": 0.1 / a[5] ** 0.1})      # no label loss: the loss,
    assert compare.pick_lr(compare.CompareConfig(), None, None, None, "ft", 0) == 0.1     # three rates past 3e-3


def test_the_label_loss_is_minus_log_the_true_labels_share_among_the_labels(monkeypatch):
    """classify's label_loss: candidates' completion log-probs (N, labels) -> softmax over the labels ->
    mean -log p(true label). A confident constant answer is punished where it is wrong."""
    import math
    from prefixgpt import scoring
    logp = {0: torch.tensor([-1.0, -5.0]), 1: torch.tensor([-3.0, -3.0])}   # label k's log-prob for rows 0, 1
    monkeypatch.setattr(scoring, "completion_logprob", lambda model, prefix, c: logp[c])
    out = scoring.classify(None, None, [0, 1], [0, 1])     # row 0 is label 0, row 1 is label 1
    p0 = math.exp(-1) / (math.exp(-1) + math.exp(-3))    # row 0: -1 against -3
    p1 = math.exp(-3) / (math.exp(-5) + math.exp(-3))    # row 1: -3 against -5
    assert out["label_loss"] == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-6)
    assert out["accuracy"] == 1.0


def test_pick_on_chooses_what_ranks_the_rates_and_is_refused_where_a_task_has_no_labels(monkeypatch, tmp_path):
    from experiments import compare
    rows = {3e-4: (0.30, 0.69, 0.57), 1e-3: (0.25, 0.60, 0.55), 3e-3: (0.20, 0.65, 0.60), 1e-2: (0.15, 0.70, 0.57),
            3e-2: (0.12, 0.72, 0.57), 1e-1: (0.11, 0.80, 0.57), 3e-5: (0.40, 0.70, 0.50), 1e-4: (0.35, 0.70, 0.52)}
    monkeypatch.setattr(compare, "cell", lambda *a: dict(zip(("val_loss", "val_label_loss", "val_accuracy"), rows[a[5]])))
    picks = {on: compare.pick_lr(compare.CompareConfig(pick_on=on), None, None, None, "ft", 0)
             for on in ("auto", "label_loss", "accuracy", "loss")}
    assert picks == {"auto": 1e-3, "label_loss": 1e-3, "accuracy": 3e-3, "loss": 1e-1}
    with pytest.raises(ValueError, match="--pick_on=accuracy scores a choice among labels"):
        compare.main([f"--out_dir={tmp_path}/cmp", "--pick_on=accuracy", "--task=e2e", f"--task_dir={tmp_path}"])


def test_a_classification_cell_holds_its_val_label_loss_and_says_so_in_its_key(sst2_setup, tmp_path):
    compare.main(sst2_setup + [f"--out_dir={tmp_path}/cmp", "--methods=prefix"])
    row = json.loads(open(tmp_path / "cmp" / "results.jsonl").readline())
    assert row["val_label_loss"] > 0 and 0 <= row["val_accuracy"] <= 1, row
    assert "|val=200+label_loss|" in row["cell"], row


def test_a_diverged_rate_past_the_edge_stops_the_bracket(monkeypatch):
    from experiments import compare
    runs = []

    def fake_cell(cfg, rt, b, results, method, lr, seed, size, p, t0):
        runs.append(lr)
        return {"val_loss": float("nan") if lr > 0.2 else 1 / lr}
    monkeypatch.setattr(compare, "cell", fake_cell)
    assert compare.pick_lr(compare.CompareConfig(), None, None, None, "prefix", 0) == 0.1
    assert runs == [0.01, 0.03, 0.1, 0.3]


@pytest.mark.slow
def test_two_processes_share_a_grid_and_write_the_rows_one_process_writes(sst2_setup, tmp_path):
    # every rate cell, the picks (bracketed past the grid's edge) and every seed: each cell run once, by
    # one of the two processes, and the same rows as one process running all of them
    grid = [a for a in sst2_setup if not a.startswith(("--seeds", "--lr_grid"))] + [
        "--methods=prefix,lora,fewshot", "--seeds=0,1"]
    compare.main(grid + [f"--out_dir={tmp_path}/one"])
    code, text = torchrun("experiments/compare.py", *grid, f"--out_dir={tmp_path}/two", log_path=tmp_path / "two.log",
                          timeout=120)
    assert code == 0, text
    one = [json.loads(line) for line in open(tmp_path / "one" / "results.jsonl")]
    two = [json.loads(line) for line in open(tmp_path / "two" / "results.jsonl")]
    assert sorted(r["cell"] for r in two) == sorted(r["cell"] for r in one)    # each cell once, none missing
    assert "[0/2]" in text and "[1/2]" in text, text                          # both processes ran cells
    by_cell = {r["cell"]: r for r in one}
    for r in two:
        assert r["val_loss"] == pytest.approx(by_cell[r["cell"]]["val_loss"], abs=1e-4), r["cell"]
    assert (tmp_path / "two" / "results.md").read_text() .splitlines()[0] == \
        (tmp_path / "one" / "results.md").read_text().splitlines()[0]

