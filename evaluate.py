"""
evaluate.py — score a frozen base, without a prefix or with any number of them, on task data.

    # loss and perplexity on any JSONL (completion tokens only) or .txt file
    python evaluate.py --mode=loss --ckpt=out/demo/base/best.pt --prefix=out/demo/e2e_prefix/prefix.pt \\
        --data=data/e2e/test.jsonl
    # completions for every distinct prompt (greedy, or beam search as in the paper), then BLEU
    python evaluate.py --mode=generate --ckpt=... --prefix=... --data=data/e2e/test.jsonl \\
        --beam=5 --out=out/demo/e2e_test_completions.jsonl
    # classification by the log-likelihood of each label's completion (no free generation)
    python evaluate.py --mode=classify --ckpt=... --prefix=... --data=data/sst2/test.jsonl

    # several prefixes side by side, and the base alone (--with_base); greedy decoding runs them all
    # in mixed batches, every row its own prefix
    python evaluate.py --mode=generate --ckpt=... --prefix=a/prefix.pt,b/prefix.pt --with_base

In generate mode, lines that share a prompt are grouped: one completion per prompt, scored by corpus
BLEU-4 against all of that prompt's references (how the E2E challenge scores). A JSONL with prompts
only (no "completion") is generated for and not scored. The --out file has one line per prefix and
prompt: {"prefix": label, "prompt": ..., "completion": ...}.
"""
import json
import math
import os
from dataclasses import dataclass, field

import torch

from checkpoint import load_model
from cli import main_guard, parse
from data.files import write_atomic
from data.tasks import TaskExample, load_task, read_jsonl
from data.tokenizer import get_tokenizer
from finetune_prefix import task_loss
from metrics import accuracy, confusion_matrix, corpus_bleu, format_confusion, macro_f1
from prefix import batch_prefixes, load_prefixes


@dataclass
class EvalConfig:
    mode: str = "loss"            # loss | generate | classify
    ckpt: str = "out/demo/base/best.pt"
    prefix: list[str] = field(default_factory=list)  # prefix files, comma-separated; none = the base alone
    with_base: bool = False       # also score the base without a prefix, beside the prefixes
    data: str = "data/e2e/test.jsonl"
    out: str = ""                 # generate: where to write the completions JSONL
    beam: int = 1                 # generate: 1 = greedy, >1 = beam search of that width
    max_new_tokens: int = 160
    max_examples: int = 0         # 0 = all (distinct prompts in generate mode)
    labels: list[str] = field(default_factory=lambda: [" negative", " positive"])  # classify
    device: str = "cpu"


@torch.no_grad()
def complete(model, tokenizer, prefixes: list, prompts: list[str], max_new_tokens=160, beam=1,
             batch_size=64) -> list[list[str]]:
    """Greedy or beam-search completion of every prompt under every prefix (None = the base alone),
    stopping at the end marker: out[i][j] is prefix i's completion of prompt j. Greedy decoding puts
    (prefix, prompt) pairs batch_size at a time into mixed batches (greedy_batch); beam search takes
    one pair at a time."""
    device = next(model.parameters()).device
    kvs = [None if p is None else p(model) for p in prefixes]
    n_slots = [0 if kv is None else kv[0][0].size(2) for kv in kvs]
    encoded = [tokenizer.encode(p) for p in prompts]
    for P in set(n_slots):
        for prompt, ids in zip(prompts, encoded):
            if not ids or len(ids) + P >= model.config.block_size:
                raise ValueError(f"prompt of {len(ids)} tokens plus prefix of {P} does not fit block_size "
                                 f"{model.config.block_size}: {prompt[:60]!r}...")
    stop = tokenizer.eot_token
    pairs = [(i, j) for i in range(len(kvs)) for j in range(len(prompts))]
    new = {}
    if beam > 1:
        for i, j in pairs:
            room = min(max_new_tokens, model.config.block_size - n_slots[i] - len(encoded[j]))
            new[i, j] = model.beam_search(torch.tensor([encoded[j]], device=device), room, beam_width=beam,
                                          prefix_kv=kvs[i], stop_token=stop)
    else:
        pairs.sort(key=lambda ij: n_slots[ij[0]] + len(encoded[ij[1]]))   # similar lengths pad least
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = greedy_batch(model, [(kvs[i], encoded[j]) for i, j in chunk], max_new_tokens, stop)
            new.update(zip(chunk, rows))
    out = [[""] * len(prompts) for _ in kvs]
    for (i, j), tokens in new.items():
        out[i][j] = tokenizer.decode(tokens[:tokens.index(stop)] if stop in tokens else tokens)
    return out


@torch.no_grad()
def greedy_batch(model, rows: list[tuple], max_new_tokens: int, stop: int) -> list[list[int]]:
    """Greedy decoding of rows (prefix_kv or None, prompt token ids) in one batch, with nothing new in
    the model: a prompt's cache is a past like a prefix, so [prefix; prompt] pasts of different
    lengths batch exactly as prefixes of different lengths do. Each row's prompt but its last token
    is encoded on top of its prefix (key_values, extend), batch_prefixes pads and masks these pasts,
    and generate decodes from the last tokens. Every row gets as many new tokens as the longest past
    leaves room for (at most max_new_tokens). Returns each row's new tokens."""
    device = next(model.parameters()).device
    pasts = []
    for prefix_kv, ids in rows:
        if len(ids) == 1:
            pasts.append(prefix_kv)
        else:
            x = torch.tensor([ids[:-1]], device=device)
            pasts.append(model.extend(prefix_kv, model.key_values(x, prefix_kv=prefix_kv), 1))
    cache, cache_mask = (None, None) if all(p is None for p in pasts) else batch_prefixes(pasts)
    longest = 0 if cache_mask is None else int(cache_mask.sum(1).max())
    room = min(max_new_tokens, model.config.block_size - longest - 1)
    last = torch.tensor([[ids[-1]] for _, ids in rows], device=device)                # (B, 1)
    out = model.generate(last, room, temperature=0, prefix_kv=cache, prefix_mask=cache_mask, stop_token=stop)
    return out[:, 1:].tolist()


def generation_scores(model, tokenizer, prefixes, labels, path, max_new_tokens=160, beam=1, max_examples=0,
                      out_path=""):
    """Complete every distinct prompt of a JSONL file under every prefix; for each prefix, corpus BLEU
    against all the references of each prompt, when the file has them."""
    rows = read_jsonl(path, need=("prompt",))
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r["prompt"], [])
        if isinstance(r.get("completion"), str):
            refs[r["prompt"]].append(r["completion"].strip())
    prompts = list(refs)[:max_examples] if max_examples else list(refs)
    hyps = complete(model, tokenizer, prefixes, prompts, max_new_tokens, beam)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        lines = [json.dumps({"prefix": label, "prompt": p, "completion": h}, ensure_ascii=False) + "\n"
                 for label, per_prompt in zip(labels, hyps) for p, h in zip(prompts, per_prompt)]
        write_atomic(out_path, "".join(lines))
    scored = [j for j, p in enumerate(prompts) if refs[p]]
    bleu = [corpus_bleu([h[j] for j in scored], [refs[prompts[j]] for j in scored]) if scored else None
            for h in hyps]
    return {"prompts": prompts, "bleu": bleu, "completions": hyps}


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
    model, ckpt = load_model(cfg.ckpt, cfg.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    prefixes, names = load_prefixes(cfg.prefix, model, tokenizer.name, cfg.with_base)
    width = max(len(n) for n in names)
    if cfg.mode == "loss":
        print(f"{cfg.ckpt} on {cfg.data}: loss per completion token")
        for name, prefix in zip(names, prefixes):
            P = 0 if prefix is None else prefix.n_prefix
            examples, _ = load_task(cfg.data, tokenizer, model.config.block_size - P, cfg.max_examples)
            loss = task_loss(model, prefix, examples)
            print(f"  {name:{width}}  loss {loss:.4f} | perplexity {math.exp(min(loss, 50)):.3f} "
                  f"| {len(examples)} examples")
    elif cfg.mode == "generate":
        res = generation_scores(model, tokenizer, prefixes, names, cfg.data, cfg.max_new_tokens, cfg.beam,
                                cfg.max_examples, cfg.out)
        for name, completions in zip(names, res["completions"]):
            print(f"--- [{name}] ---")
            for p, h in list(zip(res["prompts"], completions))[:2]:
                print(f"{p}{h}")
        decoding = f"beam {cfg.beam}" if cfg.beam > 1 else "greedy"
        print(f"{cfg.ckpt} on {cfg.data}: BLEU-4 over {len(res['prompts'])} prompts ({decoding})"
              + (f" | wrote {cfg.out}" if cfg.out else ""))
        for name, bleu in zip(names, res["bleu"]):
            print(f"  {name:{width}}  BLEU-4 " + ("n/a (no references)" if bleu is None else f"{bleu:.2f}"))
    elif cfg.mode == "classify":
        print(f"{cfg.ckpt} on {cfg.data}: classification by label likelihood")
        for name, prefix in zip(names, prefixes):
            res = classification_scores(model, tokenizer, prefix, cfg.data, cfg.labels, cfg.max_examples)
            print(f"--- [{name}] ---")
            print(format_confusion(res["confusion"], [lab.strip() for lab in cfg.labels]))
            print(f"  {name:{width}}  accuracy {res['accuracy']:.4f} | macro-F1 {res['macro_f1']:.4f} "
                  f"| {res['n']} examples")
    else:
        raise ValueError(f"--mode must be loss, generate or classify, got {cfg.mode!r}")


if __name__ == "__main__":
    main_guard(main)
