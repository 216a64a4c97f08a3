"""
copy_test.py — can a frozen base copy? The loss on a random token span written a second time.

    python experiments/copy_test.py --base=out/demo/base/best.pt

Writing a restaurant name the model never saw means copying it, token by token, from the MR into the
sentence: find where the name was, read the token after it (an induction head's job). This asks the base
that question with nothing else to go on: for --lines lines of data/drills.copy_drills (a
span of 4-12 random word-piece tokens, a separator, the same span again), it prints the mean loss per
token of the first span, which nothing predicts (about ln(vocab) nats), and of the second, which a model
that copies predicts almost exactly. "copies: no" when the second span's loss is not at least 1 nat
below the first's. The drills are drawn with --seed 99 by default, not the corpus's 1337, so a base
pretrained on drills is asked about spans it has not seen. Nothing is saved.
"""
import math
import os
import sys
from dataclasses import dataclass

import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.drills import copy_drills, drill_separator  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from prefixgpt.checkpoint import load_model  # noqa: E402
from prefixgpt.cli import main_guard, parse, setting  # noqa: E402


@dataclass
class CopyTestConfig:
    base: str = "out/demo/base/best.pt"   # the frozen base: a train.py checkpoint, a GPT-2 name or folder
    lines: int = setting(200, min=1)      # drills to score
    seed: int = setting(99, min=0)        # of the drills (the corpus's drills use 1337)


def span_losses(model, line: list[int], separator: int) -> tuple[float, float]:
    """Mean loss (nats per token) of the first span's tokens after its first, and of the second span's
    tokens after its first: the same positions within each span, so the two compare."""
    x = torch.tensor([line[:-1]])                                     # (1, T)
    y = torch.tensor(line[1:])                                        # (T,)
    with torch.no_grad():
        logits = model(x)[0][0]                                       # (T, V)
    nll = -torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(y)), y]   # (T,): nll[t] predicts line[t + 1]
    s = line.index(separator)                                         # first span: line[:s], second: line[s+1:-1]
    return nll[:s - 1].mean().item(), nll[s + 1:2 * s].mean().item()


def main(argv):
    cfg = CopyTestConfig()
    parse(argv, cfg, prog="experiments/copy_test.py", description=__doc__.split("\n\n")[0])
    model, ckpt = load_model(cfg.base, "cpu")
    tok = get_tokenizer(ckpt["tokenizer"])
    ids = copy_drills(cfg.lines, tok.vocab_size, tok.eot_token, cfg.seed)
    separator = drill_separator(tok.vocab_size)
    lines, start = [], 0
    for i, t in enumerate(ids):
        if t == tok.eot_token:
            lines.append(ids[start:i + 1])
            start = i + 1
    pairs = [span_losses(model, line, separator) for line in lines]
    first, second = (sum(p[j] for p in pairs) / len(pairs) for j in (0, 1))
    print(f"{cfg.base}: {len(lines)} random spans written twice | loss per token: first span {first:.2f}, "
          f"second span {second:.2f} nats (ln vocab = {math.log(tok.vocab_size):.2f}) | "
          f"copies: {'yes' if second < first - 1.0 else 'no'}")
    return {"first": first, "second": second}


if __name__ == "__main__":
    main_guard(main)
