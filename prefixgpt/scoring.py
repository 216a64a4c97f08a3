"""
scoring.py — the numbers every script reports, computed one way: losses, completions, BLEU, classification.

    full_split_loss(model, tokens, block_size, batch_size)          # pretraining: every window of a split
    task_loss(model, prefix, examples)                              # tuning: completion tokens only
    complete(model, tokenizer, prefixes, prompts)                   # greedy (mixed batches) or beam search
    generation_scores(...), classification_scores(...)              # E2E's five scores, facts; accuracy, macro-F1
    e2e_on_rows(model, tokenizer, prefix, rows, n)                  # the five scores and facts, rows in hand
    classify(model, prefix, *label_candidates(tokenizer, rows, labels, where))   # the same, rows in hand

A `prefix` argument is a prefix module (PrefixTuning, PromptTuning) or None for the base alone. Every
function here leaves the model in the train/eval mode it found it in, and computes under torch.no_grad.
It reads task files (data.tasks) but writes nothing except generation_scores' optional --out file.
"""
import contextlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from data.files import write_atomic
from data.tasks import TaskExample, collate, read_jsonl
from model import prefix_length, room_after
from prefix import batch_prefixes
from prefixgpt.decoding import beam_search, generate, prompt_as_prefix
from prefixgpt.facts import facts_of_prompts
from prefixgpt.metrics import accuracy, confusion_matrix, macro_f1
from prefixgpt.nlg_metrics import e2e_scores


@contextlib.contextmanager
def eval_mode(model):
    """model.eval() inside the block, and back to the mode it was in afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def full_split_loss(model, data: np.ndarray, block_size: int, batch_size: int, device,
                    ctx=contextlib.nullcontext(), max_tokens: int = 2_000_000) -> float:
    """Loss over every non-overlapping block_size window of a split (up to max_tokens): the number to
    compare runs by. A loss estimate from a few random batches is cheaper but swings by ±0.02 on Tiny
    Shakespeare. batch_size windows at a time, under the run's autocast (ctx)."""
    n = min(len(data) - 1, max_tokens) // block_size
    ids = torch.from_numpy(data[: n * block_size + 1].astype(np.int64))
    x, y = ids[:-1].view(n, block_size), ids[1:].view(n, block_size)                # (n, T) each
    total = 0.0
    with eval_mode(model):
        for i in range(0, n, batch_size):
            with ctx:
                _, loss = model(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
            total += loss.item() * len(x[i:i + batch_size])
    return total / n


@torch.no_grad()
def task_loss(model, prefix, examples, batch_size=32, ctx=contextlib.nullcontext()) -> float:
    """Mean loss per target token (completion + end marker) over examples, with the prefix."""
    total, count = task_loss_terms(model, prefix, examples, batch_size, ctx)
    if count == 0:
        raise ValueError("no completion tokens to score: every example's completion is empty or cut off")
    return total / count


def task_loss_terms(model, prefix, examples, batch_size=32, ctx=contextlib.nullcontext()) -> tuple[float, int]:
    """(summed loss, number of target tokens) over examples: what task_loss divides, and what processes
    that each scored a shard of the examples add up before dividing (prefixgpt/distributed.py)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    examples = sorted(examples, key=lambda e: len(e.tokens))   # a sum: the order is free, and this pads least
    with eval_mode(model):
        prefix_kv = None if prefix is None else prefix(model)
        for i in range(0, len(examples), batch_size):
            x, y = collate(examples[i:i + batch_size], device)
            with ctx:
                logits, _ = model(x, prefix_kv=prefix_kv)
            mask = y != -1
            total += F.cross_entropy(logits[mask].float(), y[mask], reduction="sum").item()
            count += int(mask.sum())
    return total, count


def completion_bytes(tokenizer, examples) -> int:
    """The UTF-8 bytes that the examples' target tokens spell (each completion, as far as it was kept),
    counting each end marker as one byte: the denominator that turns task_loss into nats per byte,
    which compares bases whose tokenizers differ (a byte and a BPE token are not the same unit)."""
    n = 0
    for e in examples:
        targets = e.tokens[e.n_prompt:]                                    # what the loss is taken on
        text = [t for t in targets if t != tokenizer.eot_token]
        n += len(tokenizer.decode(text).encode("utf-8")) + (len(targets) - len(text))
    return n


@torch.no_grad()
def complete(model, tokenizer, prefixes: list, prompts: list[str], max_new_tokens=160, beam=1,
             batch_size=64) -> list[list[str]]:
    """Greedy or beam-search completion of every prompt under every prefix (None = the base alone),
    stopping at the end marker: out[i][j] is prefix i's completion of prompt j. Greedy decoding puts
    (prefix, prompt) pairs batch_size at a time into mixed batches (decode_rows); beam search takes
    one pair at a time."""
    device = next(model.parameters()).device
    with eval_mode(model):
        kvs = [None if p is None else p(model) for p in prefixes]
    prefix_lengths = [prefix_length(kv) for kv in kvs]
    encoded = [tokenizer.encode(p) for p in prompts]
    for P in set(prefix_lengths):
        for prompt, ids in zip(prompts, encoded):
            if not ids or len(ids) >= room_after(P, model.config.block_size):
                raise ValueError(f"prompt of {len(ids)} tokens plus prefix of {P} does not fit block_size "
                                 f"{model.config.block_size}: {prompt[:60]!r}...")
    stop = tokenizer.eot_token
    pairs = [(i, j) for i in range(len(kvs)) for j in range(len(prompts))]
    new = {}
    with eval_mode(model):
        if beam > 1:
            for i, j in pairs:
                room = min(max_new_tokens, room_after(prefix_lengths[i], model.config.block_size) - len(encoded[j]))
                new[i, j] = beam_search(model, torch.tensor([encoded[j]], device=device), room, beam_width=beam,
                                        prefix_kv=kvs[i], stop_token=stop)
        else:
            pairs.sort(key=lambda ij: prefix_lengths[ij[0]] + len(encoded[ij[1]]))   # similar lengths pad least
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                rows = decode_rows(model, [(kvs[i], encoded[j]) for i, j in chunk], max_new_tokens, stop)
                new.update(zip(chunk, rows))
    out = [[""] * len(prompts) for _ in kvs]
    for (i, j), tokens in new.items():
        out[i][j] = tokenizer.decode(cut_at_stop(tokens, stop))
    return out


def cut_at_stop(tokens: list[int], stop: int | None) -> list[int]:
    """New tokens up to (not including) the first end marker; all of them when stop is None or absent.
    generate keeps a row decoding after its marker until every row has one, so callers cut here."""
    return tokens[:tokens.index(stop)] if stop is not None and stop in tokens else tokens


@torch.no_grad()
def decode_rows(model, rows: list[tuple], max_new_tokens: int, stop: int | None, temperature=0.0,
                top_k=None) -> list[list[int]]:
    """Decode rows (prefix_kv or None, prompt token ids) in one batch, greedy by default, with nothing
    new in the model: a prompt's cache is a prefix like a learned one, so [prefix; prompt] caches of
    different lengths batch exactly as prefixes of different lengths do. Each row's prompt but its last
    token is encoded on top of its prefix (prompt_as_prefix), batch_prefixes pads and masks these, and
    generate decodes from the last tokens. Every row gets as many new tokens as the longest one
    leaves room for (at most max_new_tokens). Returns each row's new tokens."""
    device = next(model.parameters()).device
    # per row: [prefix; prompt but its last token] as one prefix_kv
    joined = [prefix_kv if len(ids) == 1 else prompt_as_prefix(model, prefix_kv, ids[:-1]) for prefix_kv, ids in rows]
    prefix_kv, prefix_mask = (None, None) if all(p is None for p in joined) else batch_prefixes(joined)
    room = min(max_new_tokens, room_after(prefix_length(prefix_kv, prefix_mask), model.config.block_size) - 1)
    last = torch.tensor([[ids[-1]] for _, ids in rows], device=device)                # (B, 1)
    out = generate(model, last, room, temperature=temperature, top_k=top_k, prefix_kv=prefix_kv,
                   prefix_mask=prefix_mask, stop_token=stop)
    return out[:, 1:].tolist()


# the row keys of e2e_on_rows, each for its name in nlg_metrics.e2e_scores and in the tables
E2E_KEYS = {"bleu": "BLEU", "nist": "NIST", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr"}


def e2e_on_rows(model, tokenizer, prefix, rows: list[dict], n: int, prompt_head: str = "") -> dict:
    """Greedy completions of the first n distinct prompts of rows, scored against all the references of
    each: E2E's five scores (row keys of E2E_KEYS: BLEU-4, NIST, METEOR, ROUGE-L, CIDEr) and, where the
    prompts are MRs, facts carried and names % (facts.facts_summary). Every value None when n is 0.
    prompt_head (a task description) goes in front of a prompt only where it leaves 32 tokens to answer in."""
    keys = [*E2E_KEYS, "facts", "names"]
    if not n:
        return dict.fromkeys(keys)
    refs = {}
    for r in rows:
        refs.setdefault(r["prompt"], []).append(r["completion"].strip())
    prompts = list(refs)[:n]
    room = model.config.block_size - 32
    heads = [prompt_head if len(tokenizer.encode(prompt_head + p)) <= room else "" for p in prompts]
    hyps = complete(model, tokenizer, [prefix], [h + p for h, p in zip(heads, prompts)], max_new_tokens=160)[0]
    scores = e2e_scores(hyps, [refs[p] for p in prompts])
    out = {key: scores[name] for key, name in E2E_KEYS.items()}
    facts = facts_of_prompts(prompts, hyps) or {}
    return {**out, "facts": facts.get("facts"), "names": facts.get("names")}


def generation_scores(model, tokenizer, prefixes, labels, path, max_new_tokens=160, beam=1, max_examples=0,
                      out_path=""):
    """Complete every distinct prompt of a JSONL file under every prefix; for each prefix, the five E2E scores
    (nlg_metrics.e2e_scores: BLEU, NIST, METEOR, ROUGE-L, CIDEr) against all the references of each
    prompt, when the file has them, and the facts carried (facts.facts_summary) when the prompts are MRs."""
    rows = read_jsonl(path, need=("prompt",))
    refs: dict[str, list[str]] = {}
    for r in rows:
        refs.setdefault(r["prompt"], [])
        if isinstance(r.get("completion"), str):
            refs[r["prompt"]].append(r["completion"].strip())
    prompts = list(refs)[:max_examples] if max_examples else list(refs)
    hyps = complete(model, tokenizer, prefixes, prompts, max_new_tokens, beam)
    if out_path:
        lines = [json.dumps({"prefix": label, "prompt": p, "completion": h}, ensure_ascii=False) + "\n"
                 for label, per_prompt in zip(labels, hyps) for p, h in zip(prompts, per_prompt)]
        write_atomic(out_path, "".join(lines))
    scored = [j for j, p in enumerate(prompts) if refs[p]]
    scores = [e2e_scores([h[j] for j in scored], [refs[prompts[j]] for j in scored]) if scored else None
              for h in hyps]
    facts = [facts_of_prompts(prompts, per_prompt) for per_prompt in hyps]   # where the prompts are E2E MRs
    return {"prompts": prompts, "bleu": [None if s is None else s["BLEU"] for s in scores], "scores": scores,
            "facts": facts, "completions": hyps}


@torch.no_grad()
def completion_logprob(model, prefix, examples: list[TaskExample], batch_size=32) -> torch.Tensor:
    """Sum of log p(completion + end marker | prompt) for each example: (N,)."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))   # batches of like lengths pad least
    out = torch.empty(len(examples))
    with eval_mode(model):
        prefix_kv = None if prefix is None else prefix(model)
        for i in range(0, len(examples), batch_size):
            rows = order[i:i + batch_size]
            x, y = collate([examples[j] for j in rows], device)
            logp = torch.log_softmax(model(x, prefix_kv=prefix_kv)[0].float(), dim=-1)    # (B, T, V)
            mask = y != -1
            picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask      # (B, T)
            out[rows] = picked.sum(1).cpu()                                                # back in input order
    return out


def label_candidates(tokenizer, rows: list[dict], labels: list[str], where: str, room: int = 0):
    """Each row's prompt completed by every label, as tuning sees an example (prompt, completion, end
    marker): candidates[k][i] is row i with label k. Returns (candidates, each row's true label index).
    room > 0: every candidate must fit in room tokens (block_size minus the prefix), or a ValueError."""
    y_true = []
    for r in rows:
        if r["completion"] not in labels:
            raise ValueError(f"{where}:{r['_line']}: completion {r['completion']!r} is not one of the labels {labels}")
        y_true.append(labels.index(r["completion"]))
    candidates = []
    for label in labels:
        examples = []
        for r in rows:
            p = tokenizer.encode(r["prompt"])
            tokens = p + tokenizer.encode(label) + [tokenizer.eot_token]
            if room and len(tokens) > room:
                raise ValueError(f"{where}:{r['_line']}: the prompt and label {label!r} are {len(tokens)} tokens, "
                                 f"more than the {room} a prefix leaves in block_size: use a shorter prefix")
            examples.append(TaskExample(tokens, len(p), r["prompt"], label))
        candidates.append(examples)
    return candidates, y_true


def classify(model, prefix, candidates: list[list[TaskExample]], y_true: list[int]) -> dict:
    """Predict, for each row, the label whose candidate (label_candidates) is most likely; accuracy,
    macro-F1, confusion matrix, and label_loss: the mean of -log p(true label) with p the softmax over the
    labels' completion log-probabilities — the decision alone, whatever the answer's format costs."""
    scores = torch.stack([completion_logprob(model, prefix, c) for c in candidates], dim=1)   # (N, labels)
    y_pred = scores.argmax(dim=1).tolist()
    n_labels = len(candidates)
    label_loss = F.cross_entropy(scores.float(), torch.tensor(y_true, device=scores.device)).item()
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, list(range(n_labels))),
            "confusion": confusion_matrix(y_true, y_pred, n_labels), "n": len(y_true), "label_loss": label_loss}


def classification_scores(model, tokenizer, prefix, path, labels, max_examples=0):
    """Classify the rows of a JSONL file by label likelihood (classify); accuracy, macro-F1, confusion."""
    rows = read_jsonl(path)
    if max_examples:
        rows = rows[:max_examples]
    return classify(model, prefix, *label_candidates(tokenizer, rows, labels, path))
