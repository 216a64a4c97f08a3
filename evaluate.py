"""
evaluate.py — score a frozen base, with or without a prefix, on task data.

    # loss and perplexity on any JSONL (completion tokens only) or .txt file
    python evaluate.py --mode=loss --ckpt=out/demo/base/best.pt --prefix=out/demo/e2e_prefix/prefix.pt \\
        --data=data/e2e/test.jsonl
    # completions for every distinct prompt (greedy, or beam search as in the paper), then BLEU
    python evaluate.py --mode=generate --ckpt=... --prefix=... --data=data/e2e/test.jsonl \\
        --beam=5 --out=out/demo/e2e_test_completions.jsonl
    # classification by the log-likelihood of each label's completion (no free generation)
    python evaluate.py --mode=classify --ckpt=... --prefix=... --data=data/sst2/test.jsonl

In generate mode, lines that share a prompt are grouped: one completion per prompt, scored by corpus
BLEU-4 against all of that prompt's references (how the E2E challenge scores). A JSONL with prompts
only (no "completion") is generated for and not scored.
"""
import json
import math
import os
from dataclasses import dataclass, field

import torch

from checkpoint import load_model
from cli import main_guard, parse
from data.tasks import TaskExample, load_task, read_jsonl
from data.tokenizer import get_tokenizer
from finetune_prefix import task_loss
from metrics import accuracy, confusion_matrix, corpus_bleu, format_confusion, macro_f1
from prefix import load_prefix, weights_fingerprint


@dataclass
class EvalConfig:
    mode: str = "loss"            # loss | generate | classify
    ckpt: str = "out/demo/base/best.pt"
    prefix: str = ""              # a prefix file; empty = the base alone
    data: str = "data/e2e/test.jsonl"
    out: str = ""                 # generate: where to write the completions JSONL
    beam: int = 1                 # generate: 1 = greedy, >1 = beam search of that width
    max_new_tokens: int = 160
    max_examples: int = 0         # 0 = all (distinct prompts in generate mode)
    labels: list[str] = field(default_factory=lambda: [" negative", " positive"])  # classify
    device: str = "cpu"


def load_base_and_prefix(ckpt_path, prefix_path, device):
    model, ckpt = load_model(ckpt_path, device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    prefix = None
    if prefix_path:
        prefix, _ = load_prefix(prefix_path, model, tokenizer=tokenizer.name,
                                base_fingerprint=weights_fingerprint(model))
        prefix = prefix.to(device).eval()
    return model, tokenizer, prefix


@torch.no_grad()
def complete(model, tokenizer, prefix, prompts: list[str], max_new_tokens=160, beam=1) -> list[str]:
    """Greedy or beam-search completion of each prompt, stopping at the end marker."""
    device = next(model.parameters()).device
    prefix_kv = None if prefix is None else prefix(model)
    P = 0 if prefix_kv is None else prefix_kv[0][0].size(2)
    stop = tokenizer.eot_token
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if len(ids) + P >= model.config.block_size:
            raise ValueError(f"prompt of {len(ids)} tokens plus prefix of {P} does not fit block_size "
                             f"{model.config.block_size}: {prompt[:60]!r}...")
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        room = min(max_new_tokens, model.config.block_size - P - len(ids))
        if beam > 1:
            new = model.beam_search(idx, room, beam_width=beam, prefix_kv=prefix_kv, stop_token=stop)
        else:
            new = model.generate(idx, room, temperature=0, prefix_kv=prefix_kv, stop_token=stop)[0, len(ids):].tolist()
        if stop in new:
            new = new[:new.index(stop)]
        out.append(tokenizer.decode(new))
    return out


def generation_scores(model, tokenizer, prefix, path, max_new_tokens=160, beam=1, max_examples=0, out_path=""):
    """Complete every distinct prompt in a JSONL file; BLEU against all its references when present."""
    rows = read_jsonl(path, need=("prompt",))
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r["prompt"], [])
        if isinstance(r.get("completion"), str):
            refs[r["prompt"]].append(r["completion"].strip())
    prompts = list(refs)[:max_examples] if max_examples else list(refs)
    hyps = complete(model, tokenizer, prefix, prompts, max_new_tokens, beam)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        tmp = out_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for p, h in zip(prompts, hyps):
                f.write(json.dumps({"prompt": p, "completion": h}, ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
    scored = [(h, refs[p]) for p, h in zip(prompts, hyps) if refs[p]]
    bleu = corpus_bleu([h for h, _ in scored], [r for _, r in scored]) if scored else None
    return {"prompts": len(prompts), "bleu": bleu, "completions": list(zip(prompts, hyps))}


@torch.no_grad()
def completion_logprob(model, prefix, examples: list[TaskExample], batch_size=32) -> torch.Tensor:
    """Sum of log p(completion + end marker | prompt) for each example: (N,)."""
    from data.tasks import collate
    device = next(model.parameters()).device
    prefix_kv = None if prefix is None else prefix(model)
    out = []
    for i in range(0, len(examples), batch_size):
        x, y = collate(examples[i:i + batch_size], device)
        logp = torch.log_softmax(model(x, prefix_kv=prefix_kv)[0].float(), dim=-1)    # (B, T, V)
        mask = y != -1
        picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask      # (B, T)
        out.append(picked.sum(1))
    return torch.cat(out)


def classification_scores(model, tokenizer, prefix, path, labels, max_examples=0):
    """Predict the label whose completion is most likely; accuracy, macro-F1, confusion matrix."""
    rows = read_jsonl(path)
    if max_examples:
        rows = rows[:max_examples]
    y_true = []
    for r in rows:
        if r["completion"] not in labels:
            raise ValueError(f"{path}:{r['_line']}: completion {r['completion']!r} is not one of --labels {labels}")
        y_true.append(labels.index(r["completion"]))
    scores = []
    for label in labels:
        examples = []
        for r in rows:
            p = tokenizer.encode(r["prompt"])
            examples.append(TaskExample(p + tokenizer.encode(label) + [tokenizer.eot_token], len(p)))
        scores.append(completion_logprob(model, prefix, examples))
    y_pred = torch.stack(scores, dim=1).argmax(dim=1).tolist()
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, list(range(len(labels)))),
            "confusion": confusion_matrix(y_true, y_pred, len(labels)), "n": len(rows)}


def main(argv):
    cfg = EvalConfig()
    parse(argv, cfg, prog="evaluate.py", description=__doc__.split("\n\n")[0])
    model, tokenizer, prefix = load_base_and_prefix(cfg.ckpt, cfg.prefix, cfg.device)
    who = f"{cfg.ckpt}" + (f" + {cfg.prefix}" if cfg.prefix else " (no prefix)")
    if cfg.mode == "loss":
        P = 0 if prefix is None else prefix.n_prefix
        examples, _ = load_task(cfg.data, tokenizer, model.config.block_size - P, cfg.max_examples)
        loss = task_loss(model, prefix, examples)
        print(f"{who} on {cfg.data}: loss {loss:.4f} | perplexity {math.exp(min(loss, 50)):.3f} "
              f"| {len(examples)} examples")
    elif cfg.mode == "generate":
        res = generation_scores(model, tokenizer, prefix, cfg.data, cfg.max_new_tokens, cfg.beam,
                                cfg.max_examples, cfg.out)
        for p, h in res["completions"][:3]:
            print(f"{p}{h}")
        bleu = "n/a (no references)" if res["bleu"] is None else f"{res['bleu']:.2f}"
        print(f"{who} on {cfg.data}: BLEU-4 {bleu} over {res['prompts']} prompts "
              f"({'beam ' + str(cfg.beam) if cfg.beam > 1 else 'greedy'})" + (f" | wrote {cfg.out}" if cfg.out else ""))
    elif cfg.mode == "classify":
        res = classification_scores(model, tokenizer, prefix, cfg.data, cfg.labels, cfg.max_examples)
        print(format_confusion(res["confusion"], [lab.strip() for lab in cfg.labels]))
        print(f"{who} on {cfg.data}: accuracy {res['accuracy']:.4f} | macro-F1 {res['macro_f1']:.4f} "
              f"| {res['n']} examples")
    else:
        raise ValueError(f"--mode must be loss, generate or classify, got {cfg.mode!r}")


if __name__ == "__main__":
    main_guard(main)
