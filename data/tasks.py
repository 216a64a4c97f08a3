"""
data/tasks.py — task data for prefix tuning and evaluation.

Two formats:
  * JSONL, one object per line: {"prompt": ..., "completion": ...}. The model reads
    prompt + completion + end marker; the loss counts only the completion and the end marker
    (targets of -1 elsewhere), so the prefix learns to *answer*, not to model the question.
  * Plain text (.txt, or a .bin prepared with the base's tokenizer): cut into windows; the loss
    counts every token.

Few-shot prompts are made of examples too: demonstrations() picks them in rounds (one per label for a
classification task), fewshot_heads() fits whole rounds in front of each example, with_heads() puts them there.

Every error names the file and line and says what to fix.
"""
import json
import os
import random

import numpy as np
import torch

from data.bins import read_meta
from data.checks import decode_utf8
from data.files import read_json


class TaskExample:
    """tokens (list[int]) and n_prompt: tokens[:n_prompt] is the prompt (no loss on it)."""

    __slots__ = ("tokens", "n_prompt", "prompt", "completion", "label")

    def __init__(self, tokens, n_prompt, prompt="", completion="", label=None):
        self.tokens, self.n_prompt = tokens, n_prompt
        self.prompt, self.completion, self.label = prompt, completion, label


def check_file(path: str) -> None:
    if os.path.isdir(path):
        raise ValueError(f"task file {path} is a folder: pass the .jsonl, .txt or .bin file itself")
    if not os.path.exists(path):
        raise FileNotFoundError(f"task file not found: {path} (the data/<task>/prepare.py scripts make them)")


def read_jsonl(path: str, need=("prompt", "completion")) -> list[dict]:
    """Parse a JSONL file; each line must be an object with the `need` fields as strings."""
    check_file(path)
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:  # line by line, so that a bad byte is reported with its line number
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line is 0x{raw[e.start]:02x}): "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: each line must be a JSON object with {' and '.join(need)}")
            for key in need:
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{path}:{n}: missing or non-string {key!r} "
                                     f"(each line needs {', '.join(repr(k) for k in need)})")
            if not row["prompt"] and not row.get("completion"):  # only the end marker left: nothing to learn
                raise ValueError(f"{path}:{n}: empty prompt and completion: give the line some text or delete it")
            row["_line"] = n
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def load_task(path: str, tokenizer, max_len: int, max_examples: int = 0) -> tuple[list[TaskExample], int]:
    """Examples from a .jsonl or .txt file, each at most max_len tokens (block_size minus the prefix).

    Returns (examples, n_truncated): a completion that runs past max_len is cut (it loses its end
    marker) and counted; a prompt that leaves no room for a completion is an error.
    """
    if path.endswith(".txt") or path.endswith(".bin"):
        ids = _read_text_ids(path, tokenizer)
        examples = [TaskExample(ids[i:i + max_len], 0) for i in range(0, len(ids) - 1, max_len)]
        examples = [e for e in examples if len(e.tokens) >= 2]
        return (examples[:max_examples] if max_examples else examples), 0
    examples, truncated = [], 0
    for row in read_jsonl(path):
        prompt_ids = tokenizer.encode(row["prompt"])
        completion_ids = tokenizer.encode(row["completion"]) + [tokenizer.eot_token]
        if len(prompt_ids) + 1 > max_len:
            raise ValueError(f"{path}:{row['_line']}: the prompt is {len(prompt_ids)} tokens, which leaves no "
                             f"room for a completion in {max_len} (block_size minus the prefix length): "
                             "shorten it or use a shorter prefix")
        tokens = prompt_ids + completion_ids
        if len(tokens) > max_len:
            tokens, truncated = tokens[:max_len], truncated + 1
        examples.append(TaskExample(tokens, len(prompt_ids), row["prompt"], row["completion"], row.get("label")))
        if max_examples and len(examples) >= max_examples:
            break
    return examples, truncated


def read_labels(task_dir: str) -> list[str] | None:
    """A classification task's candidate completions (index = label), from the meta.json its prepare
    script wrote in task_dir (data/sst2/prepare.py); None when the folder has no labels."""
    path = os.path.join(task_dir, "meta.json")
    if not os.path.isfile(path):
        return None
    meta = read_json(path)
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if labels is None:
        return None
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise ValueError(f"{path}: \"labels\" must be a list of two or more non-empty completions, found {labels!r}")
    return labels


def demonstrations(train, labels: list[str], n: int = 8) -> list[list[TaskExample]]:
    """Few-shot demonstrations in rounds: the first n train examples, one a round; for a classification
    task, rounds of one example per label, so the prompt shows every label as often. The labels' order
    turns from round to round, so the demonstration nearest the question is not always the same label."""
    if not labels:
        return [[e] for e in train[:n]]
    rounds = list(zip(*[[e for e in train if e.completion == label][:n // len(labels)] for label in labels]))
    return [list(r[i % len(r):] + r[:i % len(r)]) for i, r in enumerate(rounds)]


def fewshot_heads(lengths: list[int], rounds, description: list[int], eot: int, room: int):
    """For examples of these lengths (tokens): what goes in front of each, the description (if it fits)
    and as many whole rounds of demonstrations as fit in room tokens; and how many demonstrations."""
    heads, used = [], []
    for n in lengths:
        head, k = (description if len(description) + n <= room else []), 0   # a short context: no room
        for r in rounds:
            shots = [t for d in r for t in d.tokens + [eot]]
            if len(head) + len(shots) + n > room:
                break
            head, k = head + shots, k + len(r)
        heads.append(head)
        used.append(k)
    return heads, used


def with_heads(examples, heads):
    """Each example with its head in front of its prompt: no loss on the head (it is prompt)."""
    return [TaskExample(h + e.tokens, len(h) + e.n_prompt, e.prompt, e.completion) for e, h in zip(examples, heads)]


def _read_text_ids(path: str, tokenizer) -> list[int]:
    """Token ids of a plain-text task: a .txt file (tokenized here) or a prepared .bin file, whose
    meta.json must name the same tokenizer as the base model."""
    check_file(path)
    if path.endswith(".txt"):
        with open(path, "rb") as f:
            ids = tokenizer.encode(decode_utf8(f.read(), path))
    else:
        meta_path = os.path.join(os.path.dirname(path), "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: a .bin task needs the meta.json its prepare script wrote")
        meta = read_meta(meta_path, "run its prepare script again")
        if meta.get("tokenizer") != tokenizer.name:
            raise ValueError(f"{path} holds {meta.get('tokenizer')!r} tokens but the base model uses the "
                             f"{tokenizer.name!r} tokenizer: prepare it again with --tokenizer {tokenizer.name}")
        ids = np.fromfile(path, dtype=np.dtype(meta["dtype"])).tolist()
    if len(ids) < 2:
        raise ValueError(f"{path} holds no text")
    return ids


def collate(examples: list[TaskExample], device="cpu"):
    """Right-pad a batch. x (B, T) inputs; y (B, T) next-token targets, -1 on prompt and padding.

    Padding at the end is safe without a mask: attention is causal, so real positions never see it.
    """
    T = max(len(e.tokens) for e in examples) - 1
    x = torch.zeros(len(examples), T, dtype=torch.long)
    y = torch.full((len(examples), T), -1, dtype=torch.long)
    for b, e in enumerate(examples):
        # BEGIN SOLUTION A6.1: inputs are the tokens but the last, targets the tokens but the first; no prompt targets
        seq = torch.tensor(e.tokens, dtype=torch.long)
        n = len(e.tokens) - 1
        x[b, :n] = seq[:-1]
        y[b, :n] = seq[1:]
        y[b, :max(e.n_prompt - 1, 0)] = -1   # target t predicts token t+1: prompt tokens are not targets
        # END SOLUTION
    return x.to(device), y.to(device)


def batches(examples, batch_size, seed=0, pool_batches=50):
    """Endless shuffled batches, epoch after epoch, each of examples of similar length.

    Each epoch is shuffled and cut into pools of pool_batches batches; a pool is sorted by length
    before it is cut into batches, and the batches are shuffled again. A batch is padded to its
    longest example: on E2E, padding falls from 27% of a batch of 16 to 1% (and the time spent on
    it), while which examples meet in a batch stays random. A pool's last incomplete batch is dropped.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    pool = batch_size * pool_batches
    while True:
        rng.shuffle(order)
        epoch = []
        for start in range(0, len(order), pool):
            part = sorted(order[start:start + pool], key=lambda j: len(examples[j].tokens))
            epoch += [part[i:i + batch_size] for i in range(0, len(part) - batch_size + 1, batch_size)]
        if not epoch:  # fewer examples than one batch
            epoch = [order[:]]
        rng.shuffle(epoch)
        for batch in epoch:
            yield [examples[j] for j in batch]
