"""
evaluate.py — score a frozen base, without a prefix or with any number of them, on task data.

    # loss and perplexity on any JSONL (completion tokens only) or .txt file
    python evaluate.py --mode=loss --base=out/demo/base/best.pt --prefix=out/demo/e2e_prefix/prefix.pt \\
        --data=data/e2e/test.jsonl
    # completions for every distinct prompt (greedy, or beam search as in the paper), then BLEU
    python evaluate.py --mode=generate --base=... --prefix=... --data=data/e2e/test.jsonl \\
        --beam=5 --out=out/demo/e2e_test_completions.jsonl
    # classification by the log-likelihood of each label's completion (no free generation)
    python evaluate.py --mode=classify --base=... --prefix=... --data=data/sst2/test.jsonl

    # several prefixes side by side, and the base alone (--with_base); greedy decoding runs them all
    # in mixed batches, every row its own prefix
    python evaluate.py --mode=generate --base=... --prefix=a/prefix.pt,b/prefix.pt --with_base

In generate mode, lines that share a prompt are grouped: one completion per prompt, scored against all of
that prompt's references (how the E2E challenge scores) by BLEU-4, NIST, METEOR (a variant), ROUGE-L and
CIDEr (prefixgpt/nlg_metrics.py); for E2E MRs also the facts carried (prefixgpt/facts.py): the share of
the input's attributes the outputs state, the outputs that name the restaurant, the facts stated wrongly,
and invented facts per output. A JSONL with prompts
only (no "completion") is generated for and not scored. The --out file has one line per prefix and
prompt: {"prefix": label, "prompt": ..., "completion": ...}.
"""
import math
import os
from dataclasses import dataclass

from data.tasks import load_task
from data.tokenizer import get_tokenizer
from model import room_after
from prefixgpt.checkpoint import is_saved_model_file, load_delta, load_model, load_prefixes, weights_fingerprint
from prefixgpt.cli import main_guard, parse, setting
from prefixgpt.metrics import format_confusion
from prefixgpt.nlg_metrics import li_liang_numbers
from prefixgpt.decoding import cast_for_inference
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, setup_runtime
from prefixgpt.scoring import classification_scores, completion_bytes, generation_scores, task_loss


@dataclass
class EvalConfig:
    mode: str = setting("loss", choices=("loss", "generate", "classify"))
    base: str = "out/demo/base/best.pt"   # a train.py checkpoint, a GPT-2 name or a Hugging Face folder
    prefix: list[str] = setting([])  # prefix files, comma-separated; none = the base alone
    with_base: bool = False       # also score the base without a prefix, beside the prefixes
    delta: str = ""               # a LoRA / adapter / BitFit file (delta.pt) applied to the base first
    data: str = "data/e2e/test.jsonl"
    out: str = ""                 # generate: where to write the completions JSONL
    overwrite: bool = False       # let --out replace an existing file (never a checkpoint or prefix file)
    beam: int = setting(1, min=1)           # generate: 1 = greedy, >1 = beam search of that width
    max_new_tokens: int = setting(160, min=1)
    max_examples: int = setting(0, min=0)   # 0 = all (distinct prompts in generate mode)
    labels: list[str] = setting([" negative", " positive"])  # classify
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("float32", choices=DTYPES)   # scores are reported in fp32 unless asked otherwise
    seed: int = 1337


def check_out_path(path: str, overwrite: bool):
    """--out may create a file, or replace one with --overwrite; never a folder, a checkpoint or a prefix."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"--out={path} is a directory: give a file name such as {os.path.join(path, 'completions.jsonl')}")
    if is_saved_model_file(path):
        raise ValueError(f"--out={path} is a checkpoint or prefix file: refusing to overwrite it; choose another --out")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"--out={path} already exists: pass --overwrite to replace it, or choose another --out")


def main(argv):
    cfg = EvalConfig()
    parse(argv, cfg, prog="evaluate.py", description=__doc__.split("\n\n")[0])
    if cfg.mode == "classify" and len(cfg.labels) < 2:
        raise ValueError(f"--labels needs at least two labels to choose from, got {cfg.labels}")
    check_out_path(cfg.out, cfg.overwrite)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, ckpt = load_model(cfg.base, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    prefixes, names = load_prefixes(cfg.prefix, model, tokenizer.name, cfg.with_base)
    if cfg.delta:   # after the prefixes, which were checked against the base's own weights
        _, meta = load_delta(cfg.delta, model, tokenizer.name, weights_fingerprint(model))
        names = [f"{meta['method']} {n}" if n != "no prefix" else f"{meta['method']} ({cfg.delta})" for n in names]
    model = cast_for_inference(model, rt.dtype)   # bf16/fp16: weights cast once (after the files were checked)
    width = max(len(n) for n in names)
    if cfg.mode == "loss":
        print(f"{cfg.base} on {cfg.data}: loss per completion token ({tokenizer.name} tokens), and per byte "
              f"of completion text (comparable across tokenizers)")
        for name, prefix in zip(names, prefixes):
            P = 0 if prefix is None else prefix.n_prefix
            examples, _ = load_task(cfg.data, tokenizer, room_after(P, model.config.block_size), cfg.max_examples)
            loss = task_loss(model, prefix, examples, ctx=rt.autocast)
            n_targets = sum(len(e.tokens) - e.n_prompt for e in examples)   # the tokens the mean is over
            per_byte = loss * n_targets / completion_bytes(tokenizer, examples)
            print(f"  {name:{width}}  loss {loss:.4f} | perplexity {math.exp(min(loss, 50)):.3f} "
                  f"| {per_byte:.4f} nats per byte | {len(examples)} examples")
    elif cfg.mode == "generate":
        with rt.autocast:
            res = generation_scores(model, tokenizer, prefixes, names, cfg.data, cfg.max_new_tokens, cfg.beam,
                                    cfg.max_examples, cfg.out)
        for name, completions in zip(names, res["completions"]):
            print(f"--- [{name}] ---")
            for p, h in list(zip(res["prompts"], completions))[:2]:
                print(f"{p}{h}")
        decoding = f"beam {cfg.beam}" if cfg.beam > 1 else "greedy"
        print(f"{cfg.base} on {cfg.data}: {len(res['prompts'])} prompts ({decoding})"
              + (f" | wrote {cfg.out}" if cfg.out else ""))
        for name, scores, facts in zip(names, res["scores"], res["facts"]):
            line = "no references: not scored" if scores is None else " | ".join(
                f"{'BLEU-4' if k == 'BLEU' else k} {v:.{3 if k in ('NIST', 'CIDEr') else 2}f}" for k, v in scores.items())
            if facts:   # E2E: what the outputs say, beside how they score
                line += (f" | facts carried {facts['facts']:.1f}% | names {facts['names']:.1f}% "
                         f"| wrong {facts['wrong']:.1f}% | added {facts['added']:.1f}% a line")
            print(f"  {name:{width}}  {line}")
            if facts:
                print(f"  {'':{width}}  facts stated, by attribute: " + ", ".join(
                    f"{k} {v:.0f}%" for k, v in facts["by_attribute"].items()))
        if any(res["facts"]):
            print("  (Li & Liang, GPT-2 medium, E2E's official test, their numbers: "
                  + li_liang_numbers("prefix", "fine-tuning") + ". METEOR here is a variant: prefixgpt/nlg_metrics.py)")
    elif cfg.mode == "classify":
        print(f"{cfg.base} on {cfg.data}: classification by label likelihood")
        for name, prefix in zip(names, prefixes):
            with rt.autocast:
                res = classification_scores(model, tokenizer, prefix, cfg.data, cfg.labels, cfg.max_examples)
            print(f"--- [{name}] ---")
            print(format_confusion(res["confusion"], [lab.strip() for lab in cfg.labels]))
            majority = max(map(sum, res["confusion"])) / res["n"]   # always answering the commonest label
            print(f"  {name:{width}}  accuracy {res['accuracy']:.4f} | macro-F1 {res['macro_f1']:.4f} "
                  f"| label loss {res['label_loss']:.4f} | {res['n']} examples (the commonest label alone: "
                  f"accuracy {majority:.4f})")


if __name__ == "__main__":
    main_guard(main)
