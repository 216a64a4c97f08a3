"""experiments/steps_curve.py: the plan it runs (a tuning sweep on one base, a pretraining sweep at one
tuning length, prefix and fine-tuning at every point), that a rerun resumes instead of retraining, the
figure, and one-line refusals. The points themselves are make demo's commands, tested where they live."""
import json
import sys

import pytest

from conftest import ROOT, one_line_error, run

sys.path.insert(0, f"{ROOT}/experiments")
import steps_curve  # noqa: E402


@pytest.fixture
def data(tmp_path):
    for folder in ("e2e", "sst2"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "test.jsonl").write_text("{}\n")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.bin").write_bytes(b"")
    return tmp_path


def test_the_sweeps_run_every_point_once_and_a_rerun_resumes(data, monkeypatch):
    calls = []

    def point(cfg, base, task, steps, method):
        calls.append((base, task, steps, method))
        if task == "e2e":
            return {"val": 1.0, "BLEU": steps / 10, "facts": 20.0, "names": 0.0}
        return {"val": 1.0, "accuracy": 50.0 + steps / 100, "label_loss": 0.7, "majority": 50.9}

    monkeypatch.setattr(steps_curve, "point", point)
    monkeypatch.setattr(steps_curve, "base_for", lambda cfg, steps: f"base_{steps}/best.pt")
    args = [f"--data_dir={data}/data", f"--corpus={data}/corpus", f"--out_dir={data}/out", "--base_steps=4",
            "--tune_steps=1,2", "--pretrain_steps=3,4", "--at_tune_steps=2"]
    steps_curve.main(args)
    curve = json.loads((data / "out" / "curve.json").read_text())
    assert sorted(curve) == sorted(f"{sweep}/{task}/{m}/{n}" for task in ("e2e", "sentiment") for m in ("prefix", "ft")
                                   for sweep, n in [("tuning", 1), ("tuning", 2), ("pretraining", 3), ("pretraining", 4)])
    assert curve["tuning/e2e/prefix/2"]["pretrain_steps"] == 4 and curve["pretraining/e2e/ft/3"]["tune_steps"] == 2
    assert ("base_3/best.pt", "sentiment", 2, "ft") in calls and len(calls) == 16
    assert (data / "out" / "curve.png").stat().st_size > 0
    calls.clear()
    steps_curve.main(args + ["--tune_steps=1,2,8"])          # a rerun trains only the points it lacks
    assert sorted(calls) == sorted([("base_4/best.pt", t, 8, m) for t in ("e2e", "sentiment") for m in ("prefix", "ft")])


@pytest.mark.parametrize("flags,needle", [(["--tasks=poem"], "must be one of"), (["--tune_steps=0"], "at least 1"),
                                          (["--tune_steps="], "at least one value"), ([], "does not exist")])
def test_bad_settings_and_missing_data_are_one_line(tmp_path, flags, needle):
    res = run("experiments/steps_curve.py", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}/out", *flags, check=False)
    assert res.returncode != 0 and needle in one_line_error(res)
