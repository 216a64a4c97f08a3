"""demo.py, the main job (`make demo`), end to end in its --quick form on small hand-made data."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_main_job_runs_end_to_end(tmp_path):
    e2e_csv = tmp_path / "e2e.csv"
    with open(e2e_csv, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mr", "ref"])
        for i in range(40):
            mr = f"name[Place {i}], food[{('Thai', 'French')[i % 2]}], area[riverside]"
            w.writerows([(mr, f"Place {i} serves food by the river."), (mr, f"By the river, Place {i} is open.")])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{w} said the {a} to the sea.\n" for w in ("Alas", "Lo", "Hark", "Fie")
                              for a in ("king", "fool", "queen", "ghost")) * 40, encoding="utf-8")
    env = {**os.environ, "PREFIXGPT_E2E": str(e2e_csv), "PREFIXGPT_SHAKESPEARE": str(corpus)}
    res = subprocess.run([sys.executable, "demo.py", "--quick", f"--out_dir={tmp_path}/out",
                          f"--data_dir={tmp_path}/data"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    out = res.stdout
    assert out.count("bit-identical") == 2                                  # both tunings left the base alone
    for label in ("[no prefix]", "[e2e_prefix/prefix.pt]", "[e2e_prompt/prefix.pt]"):
        assert out.count(label) == 2                                        # in evaluate's and in sample's output
    number = r"\s+\d+\.\d+"
    assert re.search(r"base, no prefix\s+0" + number * 2, out)
    assert re.search(r"prefix tuning\s+[\d,]+ \([\d.]+%\)" + number * 2, out)
    assert re.search(r"prompt tuning\s+[\d,]+ \([\d.]+%\)" + number * 2, out)
    rows = [json.loads(line) for line in open(tmp_path / "out" / "completions.jsonl", encoding="utf-8")]
    assert [r["prefix"] for r in rows] == ["no prefix"] * 4 + ["e2e_prefix/prefix.pt"] * 4 + ["e2e_prompt/prefix.pt"] * 4
