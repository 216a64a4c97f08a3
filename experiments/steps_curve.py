"""
steps_curve.py — does the main job read its input with more training? Names, facts and BLEU on E2E's
unseen-name test split, and sentiment accuracy against the commonest label, as the base's pretraining
steps and the prefix's tuning steps grow (make demo's recipe at every point, fine-tuning beside it).

    make demo                                   # prepares data/e2e, data/sst2 and the corpus data/demo
    python experiments/steps_curve.py           # 1-2 hours on 2 CPU cores; out/steps_curve/curve.png

Two sweeps, one seed each (--seed):
  tuning      one base pretrained for --base_steps; a prefix and a fine-tuned copy for each --tune_steps
  pretraining a base for each --pretrain_steps; a prefix and a fine-tuned copy for --at_tune_steps
Every point is make demo's own commands (train.py, finetune_prefix.py) with the step count changed; the
scores are evaluate.py's (prefixgpt/scoring.py) on the first --test_prompts test MRs. A point already
in out_dir/curve.json is not run again, so an interrupted sweep resumes. The figure has two panels per
task; the numbers are in curve.json. docs/results.md ("How far steps go") reads it.
"""
import json
import os
import sys
from dataclasses import dataclass

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.files import atomic_write, read_json, write_atomic  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from prefixgpt.checkpoint import load_model, load_prefixes  # noqa: E402
from prefixgpt.cli import UsageError, main_guard, parse, run_script, setting  # noqa: E402
from prefixgpt.scoring import classification_scores, generation_scores  # noqa: E402

TASKS = {"e2e": ("e2e", "config/finetune_e2e.toml"), "sentiment": ("sst2", "config/finetune_sst2.toml")}


@dataclass
class CurveConfig:
    out_dir: str = "out/steps_curve"
    data_dir: str = "data"                     # data_dir/e2e and data_dir/sst2, as make demo prepares them
    corpus: str = "data/demo"                  # the pretraining corpus make demo prepares
    pretrain_config: str = "config/demo_pretrain.toml"
    base_steps: int = setting(1000, min=1)     # the tuning sweep's base: make demo's
    tune_steps: list[int] = setting([60, 150, 300, 600, 1200], min=1)
    pretrain_steps: list[int] = setting([250, 500, 1000, 2000], min=1)
    at_tune_steps: int = setting(300, min=1)   # the pretraining sweep's tuning steps
    tasks: list[str] = setting(list(TASKS), choices=tuple(TASKS))
    ft_learning_rate: float = setting(1e-3, gt=0)
    test_prompts: int = setting(100, min=1)
    seed: int = 1337

    def validate(self):
        if not self.tasks or not self.tune_steps or not self.pretrain_steps:
            raise ValueError("--tasks, --tune_steps and --pretrain_steps need at least one value each")


def step(script: str, args: list[str]):
    if run_script(script, args) != 0:
        raise SystemExit(f"steps_curve: {script} failed: {' '.join(args)}")


def base_for(cfg: CurveConfig, steps: int) -> str:
    """A base pretrained for `steps` (make demo's corpus and shape; its schedule spans the steps)."""
    path = f"{cfg.out_dir}/base_{steps}/best.pt"
    if not os.path.exists(path):
        step("train.py", [cfg.pretrain_config, f"--data_dir={cfg.corpus}", f"--out_dir={cfg.out_dir}/base_{steps}",
                          f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps}",
                          f"--warmup_iters={min(50, steps // 4)}", f"--seed={cfg.seed}", "--overwrite"])
    return path


def point(cfg: CurveConfig, base: str, task: str, steps: int, method: str) -> dict:
    """Tune `method` (prefix or ft) on `task` for `steps` and score it on the test split."""
    folder, toml = TASKS[task]
    folder = f"{cfg.data_dir}/{folder}"
    out = f"{cfg.out_dir}/{os.path.basename(os.path.dirname(base))}_{task}_{method}_{steps}"
    more = ["--method=ft", f"--learning_rate={cfg.ft_learning_rate}", f"--min_lr={cfg.ft_learning_rate / 10}"] \
        if method == "ft" else []
    step("finetune_prefix.py", [toml, f"--base={base}", f"--out_dir={out}", f"--train_file={folder}/train.jsonl",
                                f"--val_file={folder}/val.jsonl", f"--max_iters={steps}", f"--eval_interval={steps}",
                                f"--log_interval={steps}", "--eval_examples=200", f"--seed={cfg.seed}",
                                "--overwrite"] + more)
    model, ckpt = load_model(f"{out}/model.pt" if method == "ft" else base)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    prefixes, _ = load_prefixes([f"{out}/prefix.pt"] if method == "prefix" else [], model, tokenizer.name)
    val = read_json(f"{out}/summary.json")["best_val_loss"]
    if task == "e2e":
        res = generation_scores(model, tokenizer, prefixes, ["x"], f"{folder}/test.jsonl", max_examples=cfg.test_prompts)
        return {"val": val, "BLEU": res["scores"][0]["BLEU"], "facts": res["facts"][0]["facts"],
                "names": res["facts"][0]["names"]}
    res = classification_scores(model, tokenizer, prefixes[0], f"{folder}/test.jsonl", [" negative", " positive"])
    return {"val": val, "accuracy": 100 * res["accuracy"], "label_loss": res["label_loss"],
            "majority": 100 * max(map(sum, res["confusion"])) / res["n"]}


def plot(cfg: CurveConfig, curve: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweeps = [("tuning", cfg.tune_steps, f"tuning steps (base: {cfg.base_steps} pretraining steps)"),
              ("pretraining", cfg.pretrain_steps, f"pretraining steps (tuning: {cfg.at_tune_steps} steps)")]
    fig, axes = plt.subplots(len(cfg.tasks), 2, figsize=(11, 4 * len(cfg.tasks)), squeeze=False)
    for r, task in enumerate(cfg.tasks):
        measures = ["names", "facts", "BLEU"] if task == "e2e" else ["accuracy", "majority"]
        for c, (sweep, xs, label) in enumerate(sweeps):
            ax = axes[r][c]
            for m, colour in zip(measures, ["C0", "C1", "C2"]):
                for method, style in (("prefix", "-o"), ("ft", "--s")):
                    if m == "majority" and method == "ft":   # one line for the commonest label, not two
                        continue
                    done = [x for x in xs if key(sweep, task, method, x) in curve]   # a resumed sweep may lack some
                    name = "commonest label" if m == "majority" else f"{m} ({'prefix' if method == 'prefix' else 'FT'})"
                    ax.plot(done, [curve[key(sweep, task, method, x)][m] for x in done], style,
                            color="grey" if m == "majority" else colour, label=name)
            if task == "e2e":
                ax.axhline(60, color="C0", lw=0.6, ls=":")   # #25's targets: names 60%, facts 70%, BLEU 35
                ax.axhline(70, color="C1", lw=0.6, ls=":")
                ax.axhline(35, color="C2", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("%" if task == "sentiment" else "% (BLEU-4 in points)")
            ax.set_title(f"{task}: {'unseen-name test MRs' if task == 'e2e' else 'SST-2 dev accuracy'}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))   # as every figure here: whole or not at all
    plt.close(fig)


def key(sweep, task, method, steps):
    return f"{sweep}/{task}/{method}/{steps}"


def main(argv):
    cfg = CurveConfig()
    parse(argv, cfg, prog="experiments/steps_curve.py", description=__doc__.split("\n\n")[0])
    for task in cfg.tasks:
        test = f"{cfg.data_dir}/{TASKS[task][0]}/test.jsonl"
        if not os.path.exists(test):
            raise UsageError(f"{test} does not exist: run make demo (or data/*/prepare.py) first")
    if not os.path.exists(f"{cfg.corpus}/train.bin"):
        raise UsageError(f"--corpus={cfg.corpus} has no train.bin: run make demo first, which prepares it")
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = f"{cfg.out_dir}/curve.json"
    curve = read_json(path) if os.path.exists(path) else {}
    plan = [("tuning", cfg.base_steps, s) for s in cfg.tune_steps] + \
           [("pretraining", p, cfg.at_tune_steps) for p in cfg.pretrain_steps]
    for sweep, pre, tune in plan:
        for task in cfg.tasks:
            for method in ("prefix", "ft"):
                k = key(sweep, task, method, tune if sweep == "tuning" else pre)
                if k not in curve:
                    curve[k] = point(cfg, base_for(cfg, pre), task, tune, method)
                    curve[k].update(pretrain_steps=pre, tune_steps=tune)
                    write_atomic(path, json.dumps(curve, indent=1) + "\n")
                print(f"{k:32} " + " | ".join(f"{m} {v:.2f}" for m, v in curve[k].items()), flush=True)
    plot(cfg, curve, f"{cfg.out_dir}/curve.png")
    print(f"wrote {path} and {cfg.out_dir}/curve.png")


if __name__ == "__main__":
    main_guard(main)
