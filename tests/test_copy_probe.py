"""experiments/copy_probe.sh end to end on tiny inputs: every step runs, the corpus holds the drills and
the invented names, and both models are scored on the unseen-name test split."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_copy_probe_runs_every_step_and_scores_prefix_and_fine_tuning(tmp_path):
    csv = tmp_path / "dev.csv"
    csv.write_text("mr,ref\n" + "".join(f'"name[Place {n}], food[Thai]","Place {n} serves Thai food."\n'
                                        for n in range(12)), encoding="utf-8")
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 200, encoding="utf-8")
    out = tmp_path / "probe"
    env = {**os.environ, "PREFIXGPT_E2E": str(csv), "PREFIXGPT_SHAKESPEARE": str(text), "SST2_TEXT": str(text),
           "OUT": str(out), "INVENTED": "2", "DRILLS": "50", "STEPS": "3", "TUNE": "2", "EXAMPLES": "2",
           "PY": sys.executable}
    res = subprocess.run(["bash", "experiments/copy_probe.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    meta = json.loads((out / "corpus" / "meta.json").read_text())
    assert meta["copy_drills"] == 50
    assert json.loads((out / "e2e" / "meta.json").read_text())["invented_names"] == 2
    assert res.stdout.count("BLEU-4") == 3                     # the base alone, the prefix, fine-tuning
    assert "random spans written twice" in res.stdout and (out / "ft_completions.jsonl").is_file()
