"""
demo.py — the main job, end to end on a CPU in minutes (`make demo` runs it): one frozen base model,
three tasks, a small prefix for each, and full fine-tuning of the same base beside every prefix.

  1. prepare the data: E2E (restaurant attributes → a sentence; the attributes in Li & Liang's form,
     "name : Alimentum | area : riverside", or as the CSV writes them, "name[Alimentum], area[riverside]",
     with --mr_format=brackets), each train line also 10 times under invented names (--invented_names),
     and SST-2 (movie-review sentences)
  2. prepare the pretraining corpus: Tiny Shakespeare, SST-2's train sentences *without* labels, and
     E2E's train sentences each followed by its attributes ("<sentence> Facts: name : ... | ...": text →
     data, the reverse of the task, so the base learns to carry names across a line), in tokens of
     GPT-2's first 2048 (--tokenizer=gpt2_2048, the default: ~2.6 bytes a token; --tokenizer=byte for bytes)
  3. pretrain a small GPT                                                  (train.py)
  4. for each task: freeze the base and train a prefix; fine-tune a copy of the whole base for the
     same number of steps                                                  (finetune_prefix.py)
       e2e        attributes → restaurant description (a conditional task; BLEU-4 on test MRs)
       sentiment  movie-review sentence → " positive" / " negative"  (accuracy on SST-2's dev set)
       review     "Positive review:" / "Negative review:" → a review of that sentiment
  5. scores on held-out data: the base alone, the base with the task's prefix, the fine-tuned model
                                                                           (evaluate.py)
  6. all three prefixes (and the base alone) serve one mixed batch, each row its own task (sample.py)

Every step is one of the project's own commands, printed before it runs, so each can be rerun alone.
The demo's data folders (data/e2e, data/sst2, data/demo) are rebuilt at every run. Each variant writes its
own out_dir: out/demo, `--long` (4 × the pretraining, 1200 tuning steps) out/demo_long, `--sst2` (--long's
base, sentiment alone, 3200 tuning steps, seeds 0, 1, 2) out/demo_sst2, `--quick` (a check of the
pipeline) out/demo_quick. A run rebuilds the folder of a run with the same settings, and refuses one that
holds another run's results unless --overwrite (out_dir/demo.json says which run a folder holds).
`--base=PATH` tunes an existing base instead of pretraining one (e.g. --long's, for --sst2); a GPT-2 name or
Hugging Face folder (`--base=gpt2`) runs the same tasks on GPT-2 with its tokenizer, with steps and rates
for a CPU (40 tuning steps, fine-tuning at 5e-5, 30 test MRs), each of which a flag overrides.
"""
import contextlib
import io
import json
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

from data.e2e.mr import MR_FORMATS
from data.files import read_json, write_atomic
from data.tasks import read_jsonl
from prefixgpt.cli import UsageError, main_guard, parse, run_script, setting
from prefixgpt.facts import facts_summary, known_names_of
from prefixgpt.gpt2 import is_gpt2_base
from prefixgpt.metrics import gap_closed, mean_std
from prefixgpt.nlg_metrics import METRICS, e2e_scores, li_liang_numbers
from prefixgpt.report import write_report

HIGHER_BETTER = ("BLEU-4", "accuracy")   # test measures where more is better; the rest are losses

# task: (data folder, file stem, the prefix's settings, how its test split is scored, the mixed batch's
# request: a fixed prompt, or "" for the test split's first prompt — a held-out input nobody picked)
TASKS = {
    "e2e": ("e2e", "", "config/finetune_e2e.toml", "generate", ""),
    "sentiment": ("sst2", "", "config/finetune_sst2.toml", "classify", ""),
    "review": ("sst2", "review_", "config/finetune_review.toml", "loss", "Positive review:"),
}


@dataclass
class DemoConfig:
    out_dir: str = "out/demo"
    data_dir: str = "data"         # data/e2e, data/sst2, and the pretraining corpus in data/demo
    pretrain_config: str = ""      # default: config/demo_pretrain.toml (config/demo_pretrain_byte.toml for bytes)
    tokenizer: str = setting("gpt2_2048", choices=("gpt2_2048", "byte"))   # of the corpus and the base
    tasks: list[str] = setting(list(TASKS), choices=tuple(TASKS))
    pretrain_iters: int = setting(0, min=0)   # pretraining steps; 0: 1000 (gpt2_2048) or 600 (byte), ~2.5 CPU minutes
    steps: int = setting(300, min=1)          # tuning steps, the same for a prefix and for fine-tuning
    sentiment_steps: int = setting(150, min=1)   # the same for sentiment, whose examples are short (a sentence
                                                 # and a word): a step costs a third of E2E's, and the answer's
                                                 # words alone take its prefix ~100 steps to learn
    seeds: list[int] = setting([1337], min=0)  # the tunings' seeds; several: every number is mean ± std over them
    base: str = ""                 # a base to tune (a train.py best.pt) instead of pretraining one
    ft_learning_rate: float = setting(1e-3, gt=0.0)   # full fine-tuning (the prefixes' rates are in their TOML)
    facts_copies: int = setting(1, min=0)     # copies of E2E's "<sentence> Facts: <attributes>" lines
    mr_format: str = setting("spaced", choices=MR_FORMATS)   # E2E's MRs: "name : X | ..." or "name[X], ..."
    # E2E train lines again under made-up names (prepare.py --invented_names), in the task and the Facts
    # lines: with 8 names in train, memorising them is cheaper than reading the MR; with these it is not
    invented_names: int = setting(10, min=0)
    test_prompts: int = setting(100, min=1)   # E2E test MRs decoded for BLEU (the offline test split has 129)
    test_reviews: int = setting(400, min=1)   # test reviews scored by loss (of 872)
    beam: int = setting(1, min=1)             # 1 = greedy for the BLEU scores; the paper uses 5 (slower)
    long: bool = False             # 4 × the pretraining, steps 1200, sentiment 400 (about 17 minutes)
    sst2: bool = False             # SST-2 in depth: --long's base, sentiment alone, 3200 steps, seeds 0,1,2
    quick: bool = False            # a smoke run (tiny settings, meaningless numbers) to check the pipeline
    overwrite: bool = False        # let this run replace another demo run's results in out_dir

    def validate(self):
        if not self.tasks or not self.seeds:
            raise ValueError("--tasks and --seeds need at least one value each")
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"--seeds repeats a seed ({self.seeds}): mean ± std needs different runs")
        if self.base and not (os.path.isfile(self.base) or is_gpt2_base(self.base)):
            raise ValueError(f"--base={self.base}: no such file (a train.py checkpoint, such as "
                             "out/demo_long/base/best.pt after `python demo.py --long`, a GPT-2 name such as "
                             "gpt2, or a Hugging Face GPT-2 folder)")


class Tee(io.TextIOBase):
    """sys.stdout that also keeps what was written (the demo reads the scores from the steps' output)."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text):
        self.stream.write(text)
        self.parts.append(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def run(cmd: list[str]) -> str:
    """Run one of the project's commands, echoing it and its output as it comes (pretraining takes
    minutes: its progress lines should show); stop the demo if it fails. Returns what it printed.
    The command runs in this process (cli.run_script): the same script, the same output, without paying
    a new interpreter's import of torch at each of the demo's ~20 steps."""
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0, tee = time.time(), Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        status = run_script(cmd[1], cmd[2:])
    if status != 0:
        raise SystemExit(f"demo: step failed (exit {status}): {' '.join(cmd)}")
    print(f"({time.time() - t0:.1f} s)", flush=True)   # where the demo's minutes go, step by step
    return "".join(tee.parts)


def generation_report(completions: list[dict], test: str) -> dict:
    """One model's E2E outputs read against the test split: the five scores (nlg_metrics) against every
    reference of each MR, and the facts carried (facts.py): `test` is BLEU-4, the table's test measure."""
    refs = {}
    for r in read_jsonl(test, need=("prompt", "completion")):
        refs.setdefault(r["prompt"], []).append(r["completion"].strip())
    rows = [c for c in completions if c["prompt"] in refs]
    scores = e2e_scores([c["completion"] for c in rows], [refs[c["prompt"]] for c in rows])
    facts = facts_summary([c["prompt"] for c in rows], [c["completion"] for c in rows],
                          known_names_of(list(refs)))
    return {"test": scores["BLEU"], **scores, "facts": facts["facts"], "names": facts["names"],
            "wrong": facts["wrong"], "added": facts["added"], "by_attribute": facts["by_attribute"]}


def verdict(row: dict) -> str:
    """What a reader must not miss in a row: a prefix that does not beat the base alone on the test measure,
    or a classifier no better than always answering the commonest label. Empty when neither."""
    lower_better = row["metric"] not in HIGHER_BETTER
    prefix = statistics.mean(s[0]["test"] for s in row["test"])
    base = row["base_test"]["test"]
    if "majority" in row:
        acc = statistics.mean(s[0]["accuracy"] for s in row["test"])
        if acc <= row["majority"] + 1.0:
            return (f"NO BETTER THAN CHANCE: prefix accuracy {acc:.1f}% vs {row['majority']:.1f}% for always answering the "
                    f"commonest label (docs/results.md, 'Sentiment')")
    if (prefix >= base) if lower_better else (prefix <= base):
        return f"BELOW THE BASE on {row['metric']} (docs/results.md)"
    return ""


def results_table(rows: list[dict], seeds: list[int]) -> str:
    """The demo's table: per task, the val losses (base alone, prefix, fine-tuning), then the test measure
    for the three and the share of fine-tuning's gain on it that the prefix reaches ("gap closed", measured
    on the test measure: BLEU-4, accuracy, the test loss; never on a loss the answer's format moves),
    and a verdict where the prefix does not beat the base. E2E adds its five scores and the facts carried."""
    over = "" if len(seeds) == 1 else f"; mean ± std over seeds {', '.join(map(str, seeds))}"
    steps = ", ".join(f"{r['task']} {r['steps']}" for r in rows)
    lines = [f"\n=== one frozen base, {len(rows)} task{'s' * (len(rows) > 1)}, tuned for {steps} steps{over} ===",
             "val loss (nats per token) of the base alone, with the task's prefix, and fully fine-tuned; then each "
             "task's test measure, and the share of fine-tuning's gain on it that the prefix reaches"]
    head = ["task", "prefix parameters", "base", "prefix", "FT", "test measure", "base", "prefix", "FT", "gap closed"]
    cells = []
    for r in rows:
        seen = lambda key, j: [s[j][key] for s in r["test"]]  # noqa: E731
        digits = 3 if r["metric"] == "test loss" else 1 if r["metric"] == "accuracy" else 2
        sign = 1 if r["metric"] in HIGHER_BETTER else -1         # gap_closed works on a loss: lower is better
        gaps = [gap_closed(-sign * r["base_test"]["test"], -sign * s[0]["test"], -sign * s[1]["test"]) for s in r["test"]]
        cells.append([r["task"], f"{r['trainable']:,} ({r['percent']:.2f}%)", f"{r['base']:.3f}",
                      mean_std(r["prefix"], 3, one_bare=True), mean_std(r["ft"], 3, one_bare=True), r["metric"],
                      f"{r['base_test']['test']:.{digits}f}", mean_std(seen("test", 0), digits, one_bare=True),
                      mean_std(seen("test", 1), digits, one_bare=True),
                      "n/a" if None in gaps else mean_std(gaps, 0, one_bare=True) + "%"])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    fmt = lambda cs: "  ".join([cs[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cs[1:], widths[1:])])  # noqa: E731
    lines += [fmt(head)] + [fmt(c) for c in cells]
    for r in rows:   # what each task's test measure does not show
        seen = lambda key, j: [s[j][key] for s in r["test"]]  # noqa: E731
        trio = lambda key, d, unit="": " / ".join(  # noqa: E731
            [f"{r['base_test'][key]:.{d}f}{unit}"] + [mean_std(seen(key, j), d, one_bare=True) + unit for j in (0, 1)])
        if "majority" in r:
            lines.append(f"{r['task']}: always the commonest label: accuracy {r['majority']:.1f}% | label loss "
                         f"(nats, moved by learning the labels' words alone) base / prefix / FT {trio('label_loss', 3)}")
        if r["metric"] == "BLEU-4":
            lines.append(f"{r['task']}, base / prefix / FT: " + " | ".join(
                f"{k} {trio(k, 3 if k in ('NIST', 'CIDEr') else 1)}" for k in METRICS))
            lines.append(f"{r['task']}, what the outputs say (prefixgpt/facts.py), base / prefix / FT: facts carried "
                         f"{trio('facts', 0, '%')} | names the restaurant {trio('names', 0, '%')} | facts stated "
                         f"wrongly {trio('wrong', 0, '%')} | invented facts per output {trio('added', 0, '%')}")
            by = [s[0].get("by_attribute") for s in r["test"]]   # the prefix's, per seed
            if all(by):
                lines.append(f"{r['task']}, the prefix's facts stated by attribute: " + ", ".join(
                    f"{k} {mean_std([b.get(k) for b in by], 0, one_bare=True)}%" for k in by[0]))
            lines.append("  (Li & Liang, GPT-2 medium on E2E's official test, their numbers, not these: "
                         + li_liang_numbers("prefix") + "; METEOR here is a variant without synonyms)")
        if (v := verdict(r)):
            lines.append(f"{r['task']}: {v}")
    return "\n".join(lines)


def settings(argv) -> DemoConfig:
    """The demo's settings from the command line, with what --long and --sst2 change (except where a
    setting was given explicitly)."""
    cfg = DemoConfig()
    seen = parse(argv, cfg, prog="demo.py", description=__doc__.split("\n\n")[0])
    byte = cfg.tokenizer == "byte"
    cfg.pretrain_config = cfg.pretrain_config or f"config/demo_pretrain{'_byte' if byte else ''}.toml"
    cfg.pretrain_iters = cfg.pretrain_iters or (600 if byte else 1000)
    if cfg.long or cfg.sst2:   # 4 × the pretraining, 1200 tuning steps a task, except what was set explicitly
        cfg = replace(cfg, **{k: v for k, v in dict(pretrain_iters=4 * cfg.pretrain_iters, steps=1200,
                                                    sentiment_steps=400).items() if k not in seen})
    if is_gpt2_base(cfg.base) and not cfg.quick:   # GPT-2 on a CPU: a prefix step ~2.5 s, a full fine-tuning step ~5 s
        cfg = replace(cfg, **{k: v for k, v in dict(steps=40, sentiment_steps=40, test_prompts=30, test_reviews=100,
                                                    ft_learning_rate=5e-5).items() if k not in seen})
    if cfg.sst2:   # the in-domain SST-2 run: the prefix's decision is slow to learn, so 8 × --long's steps
        cfg = replace(cfg, **{k: v for k, v in dict(tasks=["sentiment"], sentiment_steps=3200, seeds=[0, 1, 2],
                                                    ).items() if k not in seen})
    if "out_dir" not in seen:   # each variant its own folder, so that none overwrites another's results
        cfg.out_dir = "out/demo_sst2" if cfg.sst2 else "out/demo_long" if cfg.long else "out/demo_quick" if cfg.quick \
            else cfg.out_dir
    return cfg


def claim_out_dir(cfg: DemoConfig):
    """Write out_dir/demo.json with this run's settings, after checking that out_dir holds nothing or a demo
    run with the same settings (which this run rebuilds). Another run's results are refused unless
    --overwrite: a variant must never replace another's prefixes and tables."""
    path = os.path.join(cfg.out_dir, "demo.json")
    mine = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "overwrite")}
    if os.path.isdir(cfg.out_dir) and os.listdir(cfg.out_dir) and not cfg.overwrite:
        theirs = read_json(path) if os.path.isfile(path) else None
        if theirs != mine:
            what = ("files that no demo run wrote" if theirs is None else "another demo run's results ("
                    + ", ".join(f"--{k}={theirs.get(k)}" for k in mine if theirs.get(k) != mine[k]) + ")")
            raise UsageError(f"{cfg.out_dir} holds {what}: pass another --out_dir, or --overwrite to replace them")
    os.makedirs(cfg.out_dir, exist_ok=True)
    write_atomic(path, json.dumps(mine, indent=1) + "\n")


def main(argv):
    cfg = settings(argv)
    claim_out_dir(cfg)
    py, out, t0 = sys.executable, cfg.out_dir, time.time()
    pre = [f"--max_iters={cfg.pretrain_iters}", f"--lr_decay_iters={cfg.pretrain_iters}",
           f"--eval_interval={cfg.pretrain_iters}"]   # one estimate at the end: the tables use the tasks' losses
    if cfg.quick:
        pre = ["--max_iters=30", "--lr_decay_iters=30", "--eval_interval=30", "--log_interval=10"]
    limit = ["--max_examples=5"] if cfg.quick else []

    e2e, sst2, corpus = f"{cfg.data_dir}/e2e", f"{cfg.data_dir}/sst2", f"{cfg.data_dir}/demo"
    run([py, "data/e2e/prepare.py", "--out_dir", e2e, "--mr_format", cfg.mr_format]
        + (["--invented_names", str(cfg.invented_names)] if cfg.invented_names else []))
    run([py, "data/sst2/prepare.py", "--out_dir", sst2])
    base = cfg.base or f"{out}/base/best.pt"
    if not cfg.base:   # pretrain the base on its corpus
        run([py, "data/shakespeare/prepare.py", "--out_dir", corpus, "--tokenizer", cfg.tokenizer,
             "--extra_text", f"{sst2}/train_text.txt"]
            + ["--extra_text", f"{e2e}/train_facts.txt"] * cfg.facts_copies)
        run([py, "train.py", cfg.pretrain_config, f"--data_dir={corpus}", f"--out_dir={out}/base", "--overwrite"] + pre)

    rows, requests = [], []
    for task in cfg.tasks:
        folder, stem, toml, scoring, request = TASKS[task]
        data = lambda split: f"{cfg.data_dir}/{folder}/{stem}{split}.jsonl"  # noqa: E731
        test = data("test")
        files = [f"--train_file={data('train')}", f"--val_file={data('val')}", "--overwrite"]
        steps = 15 if cfg.quick else cfg.sentiment_steps if task == "sentiment" else cfg.steps
        tune = [f"--max_iters={steps}", f"--eval_interval={steps}", f"--log_interval={max(steps // 4, 1)}",
                "--eval_examples=200" if not cfg.quick else "--eval_examples=32"]
        # per seed: val losses, and test scores as [prefix, FT]; the base alone (no seed) is scored once,
        # with the first seed's run. Each score dict's "test" is the model's test measure (BLEU-4, accuracy,
        # test loss); its other keys are what is printed beside it (E2E's five scores and facts; the label loss)
        row = {"task": task, "steps": steps, "prefix": [], "ft": [], "test": []}
        for i, seed in enumerate(cfg.seeds):
            tag = "" if len(cfg.seeds) == 1 else f"_s{seed}"
            run([py, "finetune_prefix.py", toml, f"--base={base}", f"--out_dir={out}/{task}_prefix{tag}",
                 f"--seed={seed}"] + files + tune)
            run([py, "finetune_prefix.py", toml, f"--base={base}", f"--out_dir={out}/{task}_ft{tag}", "--method=ft",
                 f"--learning_rate={cfg.ft_learning_rate}", f"--min_lr={cfg.ft_learning_rate / 10}",
                 f"--seed={seed}"] + files + tune)
            prefix, tuned = f"{out}/{task}_prefix{tag}/prefix.pt", f"{out}/{task}_ft{tag}/model.pt"
            summary = {m: read_json(f"{out}/{task}_{m}{tag}/summary.json") for m in ("prefix", "ft")}
            row.update(trainable=summary["prefix"]["trainable"], percent=summary["prefix"]["percent"],
                       base=summary["prefix"]["val_loss_base"])
            row["prefix"].append(summary["prefix"]["best_val_loss"])
            row["ft"].append(summary["ft"]["best_val_loss"])
            with_base = ["--with_base"] if i == 0 else []
            if scoring == "generate":     # test MRs decoded: the base alone and the prefix in mixed batches
                n = ["--max_examples=5"] if cfg.quick else [f"--max_examples={cfg.test_prompts}"]
                mine, theirs = f"{out}/{task}_completions{tag}.jsonl", f"{out}/{task}_ft_completions{tag}.jsonl"
                run([py, "evaluate.py", "--mode=generate", f"--base={base}", *with_base, f"--prefix={prefix}",
                     f"--data={test}", f"--beam={cfg.beam}", f"--out={mine}", "--overwrite"] + n)
                run([py, "evaluate.py", "--mode=generate", f"--base={tuned}", f"--data={test}",
                     f"--beam={cfg.beam}", f"--out={theirs}", "--overwrite"] + n)
                row["metric"] = "BLEU-4"
                both, ft_rows = (read_jsonl(path, need=("prefix", "prompt", "completion")) for path in (mine, theirs))
                scored = [generation_report([c for c in both if c["prefix"] == "no prefix"], test)] if i == 0 else []
                scored += [generation_report([c for c in both if c["prefix"] != "no prefix"], test),
                           generation_report(ft_rows, test)]
            elif scoring == "classify":   # by the likelier label, on SST-2's dev set
                text = run([py, "evaluate.py", "--mode=classify", f"--base={base}", *with_base, f"--prefix={prefix}",
                            f"--data={test}"] + limit)
                text += run([py, "evaluate.py", "--mode=classify", f"--base={tuned}", f"--data={test}"] + limit)
                row["metric"] = "accuracy"  # not the label loss: learning the labels' words alone moves that
                row["majority"] = 100 * float(re.findall(r"commonest label alone: accuracy ([0-9.]+)", text)[0])
                scored = [{"test": 100 * float(acc), "accuracy": 100 * float(acc), "label_loss": float(ll)} for acc, ll in
                          re.findall(r"accuracy ([0-9.]+) \| macro-F1 [0-9.]+ \| label loss ([0-9.]+)", text)]
            else:                         # loss on the test reviews
                n = limit or [f"--max_examples={cfg.test_reviews}"]
                text = run([py, "evaluate.py", "--mode=loss", f"--base={base}", *with_base, f"--prefix={prefix}",
                            f"--data={test}"] + n)
                text += run([py, "evaluate.py", "--mode=loss", f"--base={tuned}", f"--data={test}"] + n)
                row["metric"] = "test loss"
                scored = [{"test": float(x)} for x in re.findall(r"loss ([0-9.]+) \|", text)]
            if i == 0:
                row["base_test"] = scored.pop(0)
            row["test"].append(scored)
        rows.append(row)
        first = "" if len(cfg.seeds) == 1 else f"_s{cfg.seeds[0]}"
        requests.append({"prefix": f"{out}/{task}_prefix{first}/prefix.pt",
                         "prompt": request or read_jsonl(test, need=("prompt",))[0]["prompt"]})
    requests.append({"prefix": "", "prompt": requests[0]["prompt"]})   # the base alone, for contrast

    if "e2e" in cfg.tasks:   # where the E2E prefix's attention goes, layer by layer and head by head
        first = "" if len(cfg.seeds) == 1 else f"_s{cfg.seeds[0]}"
        run([py, "experiments/attention_mass.py", f"--base={base}", f"--prefix={out}/e2e_prefix{first}/prefix.pt",
             f"--data={e2e}/test.jsonl", f"--out={out}/e2e_mass.png"] + (["--examples=5"] if cfg.quick else []))
    path = f"{out}/requests.jsonl"
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in requests))
    samples = run([py, "sample.py", f"--base={base}", f"--requests={path}", "--temperature=0", "--stop_at_eot",
                   "--max_new_tokens=160"])
    table = results_table(rows, cfg.seeds)
    print(table)
    write_atomic(f"{out}/results.json", json.dumps(rows, indent=1) + "\n")
    report = write_report(out, cfg, rows, table, samples)
    print(f"\nthe demo's page: {report} (one file: the table, the curves, the samples, the attention map)")
    print(f"\ndemo finished in {time.time() - t0:.0f} s; everything is under {out}/")


if __name__ == "__main__":
    main_guard(main)
