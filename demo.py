"""
demo.py — the main job, end to end on a CPU in a few minutes (`make demo` runs it):

  1. prepare E2E (restaurant meaning representation → sentence), split by MR
  2. prepare the pretraining corpus: Tiny Shakespeare + 4 copies of the *unlabelled* sentences of E2E's
     train split (so the byte-level base can read restaurant English; no MR, no val/test text)
  3. pretrain a small GPT                                      (train.py)
  4. freeze it; train a prefix (prefix tuning) and a soft prompt (prompt tuning) on E2E
  5. score the test MRs: BLEU of the frozen base without and with each prefix
  6. samples: the base, and both prefixes, in one mixed batch   (sample.py)

Every step is one of the project's own commands, printed before it runs, so each can be rerun alone.
The demo's folders (data/e2e, data/demo, out/demo by default) are its own and are rebuilt each time.
"""
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from cli import main_guard, parse


@dataclass
class DemoConfig:
    out_dir: str = "out/demo"
    data_dir: str = "data"         # E2E goes to <data_dir>/e2e, the pretraining corpus to <data_dir>/demo
    pretrain_config: str = "config/demo_pretrain.toml"
    finetune_config: str = "config/finetune_e2e.toml"
    task_text_copies: int = 4      # copies of E2E's training sentences in the pretraining corpus
    beam: int = 1                  # 1 = greedy for the BLEU scores; the paper uses 5 (slower)
    quick: bool = False            # a 1-minute smoke run (tiny settings) to check the pipeline


def run(cmd: list[str], capture=False) -> str:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    if capture:
        res = subprocess.run(cmd, text=True, capture_output=True)
        sys.stdout.write(res.stdout)
    else:
        res = subprocess.run(cmd, text=True)
    if res.returncode != 0:
        if capture:
            sys.stderr.write(res.stderr)
        raise SystemExit(f"demo: step failed (exit {res.returncode}): {' '.join(cmd)}")
    return res.stdout if capture else ""


def main(argv):
    cfg = DemoConfig()
    parse(argv, cfg, prog="demo.py", description=__doc__.split("\n\n")[0])
    py = sys.executable
    out = cfg.out_dir
    t0 = time.time()
    quick_pre = ["--max_iters=30", "--eval_interval=30", "--log_interval=10"] if cfg.quick else []
    quick_ft = ["--max_iters=20", "--eval_interval=20", "--log_interval=10", "--eval_examples=64"] if cfg.quick else []
    quick_eval = ["--max_examples=5", "--max_new_tokens=40"] if cfg.quick else []

    e2e, corpus = f"{cfg.data_dir}/e2e", f"{cfg.data_dir}/demo"
    run([py, "data/e2e/prepare.py", "--out_dir", e2e])
    # E2E's training sentences 4 times (1.8 MB) beside Shakespeare (1.1 MB), so that in 2-3 minutes of
    # CPU the base learns to spell restaurant English. Measured with an earlier base (800 steps at lr
    # 2e-3): twice gave half the prefix's BLEU; 8 times let the base alone reach 10.9 BLEU, and the
    # prefix added only 0.3 to that.
    run([py, "data/shakespeare/prepare.py", "--out_dir", corpus]
        + ["--extra_text", f"{e2e}/train_text.txt"] * cfg.task_text_copies)
    run([py, "train.py", cfg.pretrain_config, f"--data_dir={corpus}", f"--out_dir={out}/base", "--overwrite"]
        + quick_pre)
    base = f"{out}/base/best.pt"
    for method in ("prefix", "prompt"):
        run([py, "finetune_prefix.py", cfg.finetune_config, f"--base={base}", f"--train_file={e2e}/train.jsonl",
             f"--val_file={e2e}/val.jsonl", f"--out_dir={out}/e2e_{method}", f"--method={method}", "--overwrite"]
            + quick_ft)

    # the base alone and both prefixes, scored in one run: greedy decoding puts all three in mixed batches
    text = run([py, "evaluate.py", "--mode=generate", f"--ckpt={base}", "--with_base",
                f"--prefix={out}/e2e_prefix/prefix.pt,{out}/e2e_prompt/prefix.pt", f"--data={e2e}/test.jsonl",
                f"--beam={cfg.beam}", f"--out={out}/completions.jsonl", "--overwrite"] + quick_eval, capture=True)
    bleu = {name: float(re.search(rf"{re.escape(label)} +BLEU-4 ([0-9.]+)", text).group(1))
            for name, label in (("base", "no prefix"), ("prefix", "e2e_prefix/prefix.pt"),
                                ("prompt", "e2e_prompt/prefix.pt"))}
    n_prompts = re.search(r"over (\d+) prompts", text).group(1)

    mr = "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside] ||"
    run([py, "sample.py", f"--ckpt={base}", f"--prefix={out}/e2e_prefix/prefix.pt,{out}/e2e_prompt/prefix.pt",
         "--with_base", f"--prompt={mr}", "--num_samples=1", "--temperature=0", "--stop_at_eot",
         "--max_new_tokens=160"])

    summaries = {}
    for name in ("prefix", "prompt"):
        with open(f"{out}/e2e_{name}/summary.json", encoding="utf-8") as f:
            summaries[name] = json.load(f)
    print(f"\n=== E2E, one frozen base: loss on the val completions (nats per byte), BLEU-4 on the "
          f"{n_prompts} test MRs by {'greedy decoding' if cfg.beam == 1 else f'beam {cfg.beam}'} ===")
    print(f"{'':16} {'trainable parameters':>22}   {'val loss':>8}   {'BLEU-4':>6}")
    print(f"{'base, no prefix':16} {'0':>22}   {summaries['prefix']['val_loss_base']:8.3f}   {bleu['base']:6.2f}")
    for name, summary in summaries.items():
        params = f"{summary['trainable']:,} ({summary['percent']:.2f}%)"
        print(f"{name + ' tuning':16} {params:>22}   {summary['best_val_loss']:8.3f}   {bleu[name]:6.2f}")
    print(f"\ndemo finished in {time.time() - t0:.0f} s; everything is under {out}/")


if __name__ == "__main__":
    main_guard(main)
