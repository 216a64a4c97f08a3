"""compare.py: the family side by side, end to end on a tiny base; a rerun resumes instead of redoing."""
import json

import pytest

from conftest import run
from data.shakespeare.prepare import prepare
from data.tokenizer import ByteTokenizer


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
    first = run("compare.py", *args, timeout=600)
    table = (tmp_path / "cmp" / "results.md").read_text()
    for method in ("base alone", "prefix", "prompt", "lora", "adapter", "bitfit", "ft-top2", "| ft |", "fewshot"):
        assert method in table, table
    rows = [json.loads(line) for line in open(tmp_path / "cmp" / "results.jsonl")]
    runs = [r for r in rows if r["kind"] == "run"]
    # 7 trained methods x 1 seed x 2 sizes, the P sweep's extra length, one fewshot row
    assert len(runs) == 7 * 1 * 2 + 1 + 1
    assert all(r["forgetting"] == runs[0]["forgetting"] for r in runs if r["method"] in ("prefix", "prompt"))
    assert (tmp_path / "cmp" / "results.png").stat().st_size > 0
    again = run("compare.py", *args, timeout=600)
    assert "so far" in first.stdout and "so far" not in again.stdout          # nothing ran the second time
    assert (tmp_path / "cmp" / "results.md").read_text() == table
