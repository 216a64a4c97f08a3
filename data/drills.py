"""
drills.py — pretraining text made to teach one skill: copying (data/shakespeare/prepare.py --copy_drills,
experiments/copy_test.py).
"""
import numpy as np


def drill_separator(vocab_size: int) -> int:
    """The token between a drill's two spans: the one just below the tokens spans are drawn from."""
    return (256 if vocab_size > 512 else 32) - 1


def copy_drills(n: int, vocab_size: int, eot: int, seed: int = 1337) -> list[int]:
    """n lines, each a span of 4-12 random tokens, a separator, the same span again, and the end marker:
    text in which the second half can only be predicted by finding the first and copying it token by
    token (an induction head's job). Tokens are drawn from the merges (ids 256 and up: word pieces, not
    single bytes) where the vocabulary has them."""
    rng = np.random.default_rng(seed)
    low = drill_separator(vocab_size) + 1
    out = []
    for _ in range(n):
        span = [int(t) for t in rng.integers(low, vocab_size, size=int(rng.integers(4, 13))) if t != eot]
        out += span + [low - 1] + span + [eot]
    return out
