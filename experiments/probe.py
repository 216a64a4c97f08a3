"""
probe.py — what a frozen base already knows about a classification task: a linear probe on each layer.

    python experiments/probe.py --base=out/demo_long/base/best.pt --data_dir=data/sst2      # SST-2 sentiment

A prefix, a prompt, LoRA or an adapter leaves the base's weights as they are: they can only steer what the
base computes. This script asks how much of the answer that computation already holds: for the prompts
of --data_dir's train.jsonl (the first --train_examples) and test.jsonl, it reads every layer's vector at
the last position (where the label is predicted) and its mean over the prompt's positions
(analysis.layer_features), fits a logistic regression on train (analysis.linear_probe) and prints its
test accuracy, beside the majority class's. The classes are the distinct completions (" positive",
" negative"). Nothing is saved; the base is not changed.
"""
import os
import sys
from collections import Counter
from dataclasses import dataclass

import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.tasks import read_jsonl  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from prefixgpt.analysis import layer_features, linear_probe  # noqa: E402
from prefixgpt.checkpoint import load_model  # noqa: E402
from prefixgpt.cli import main_guard, parse, setting  # noqa: E402
from prefixgpt.runtime import DEVICE_PATTERN, setup_runtime  # noqa: E402


@dataclass
class ProbeConfig:
    base: str = "out/demo/base/best.pt"      # the frozen base: a train.py checkpoint, a GPT-2 name or folder
    data_dir: str = "data/sst2"              # train.jsonl and test.jsonl: prompt → one of a few completions
    train_examples: int = setting(8000, min=2)
    max_classes: int = setting(20, min=2)    # more distinct completions than this: not a classification task
    device: str = setting("cpu", pattern=DEVICE_PATTERN)


def features(model, tokenizer, rows, device) -> torch.Tensor:
    """(N, n_layer + 2, 2, C): layer_features of each prompt, cut to its last block_size tokens."""
    room = model.config.block_size
    return torch.stack([layer_features(model, torch.tensor([tokenizer.encode(r["prompt"])[-room:]], device=device))
                        for r in rows]).cpu()


def main(argv):
    cfg = ProbeConfig()
    parse(argv, cfg, prog="experiments/probe.py", description=__doc__.split("\n\n")[0])
    rt = setup_runtime(cfg.device, "float32", 0)
    train = read_jsonl(f"{cfg.data_dir}/train.jsonl")[:cfg.train_examples]
    test = read_jsonl(f"{cfg.data_dir}/test.jsonl")
    classes = sorted({r["completion"] for r in train})
    if not 2 <= len(classes) <= cfg.max_classes:
        raise ValueError(f"{cfg.data_dir}/train.jsonl has {len(classes)} distinct completions: a probe needs a "
                         f"classification task (2 to --max_classes={cfg.max_classes} answers, such as SST-2's)")
    unknown = {r["completion"] for r in test} - set(classes)
    if unknown:
        raise ValueError(f"{cfg.data_dir}/test.jsonl has answers that train.jsonl never gives: {sorted(unknown)[:3]}")
    model, ckpt = load_model(cfg.base, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    y_train, y_test = (torch.tensor([classes.index(r["completion"]) for r in rows]) for rows in (train, test))
    x_train, x_test = features(model, tokenizer, train, rt.device), features(model, tokenizer, test, rt.device)
    majority = Counter(y_test.tolist()).most_common(1)[0][1] / len(test)
    print(f"{cfg.base}: linear probes on {len(train)} train prompts, test accuracy on {len(test)} "
          f"(classes {classes}; the majority class alone: {100 * majority:.1f}%)")
    print(f"{'layer':22} {'last position':>14} {'mean over positions':>20}")
    names = ["embeddings"] + [f"block {i + 1}" for i in range(model.config.n_layer)] + ["final LayerNorm"]
    for layer, name in enumerate(names):
        acc = [linear_probe(x_train[:, layer, j], y_train, x_test[:, layer, j], y_test) for j in (0, 1)]
        print(f"{name:22} {100 * acc[0]:13.1f}% {100 * acc[1]:19.1f}%", flush=True)


if __name__ == "__main__":
    main_guard(main)
