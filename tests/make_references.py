"""
tests/make_references.py — write tests/reference/assignments.npz, the outputs the assignment tests compare a
student's code against, computed by this project's own (solution) code. Solution-only: a student copy
leaves it out (assignments.SOLUTION_ONLY).

    python tests/make_references.py          # after changing what a solution region computes

Everything is fp32 on the CPU, from a tiny fixed configuration and fixed seeds. The file stores the inputs
(the model's weights included) beside the outputs, so a test rebuilds each input from the file and does not
depend on torch's random number generator staying the same across versions. tests/test_teacher.py checks
that the file holds what this script computes now.
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # run as a script, Python puts tests/ on sys.path, not the project root
    sys.path.insert(0, ROOT)
from data.files import atomic_write  # noqa: E402
from data.tasks import TaskExample, collate  # noqa: E402
from model import (GPT, GPTConfig, attention_mask, attention_weights,  # noqa: E402
                   prefix_attention_reference, token_positions)
from prefix import PrefixTuning, PromptTuning, batch_prefixes  # noqa: E402
from prefixgpt.analysis import nearest_tokens  # noqa: E402
from prefixgpt.decoding import KVCache, generate, step  # noqa: E402
from prefixgpt.methods import Adapter, LoRALinear  # noqa: E402

PATH = os.path.join(ROOT, "tests", "reference", "assignments.npz")
CONFIG = dict(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def base_model() -> GPT:
    """The tiny base, its matrices scaled up: at GPT-2's initialisation every logit is nearly equal, and
    greedy decoding would follow ties that rounding could break either way."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(6.0)
    return model


def random_kv(g, P, batch=1):
    """A prefix as one tensor (n_layer, 2, batch, nh, P, hd), std 1."""
    c = GPTConfig(**CONFIG)
    return torch.randn(c.n_layer, 2, batch, c.n_head, P, c.head_dim, generator=g)


def as_pairs(kv: torch.Tensor) -> list:
    return [(layer[0], layer[1]) for layer in kv]


def stack_pairs(pairs) -> torch.Tensor:
    return torch.stack([torch.stack([k, v]) for k, v in pairs])


def build() -> dict:
    """Every reference array by name; inputs and outputs side by side."""
    ref = {"config": json.dumps(CONFIG)}
    model = base_model()
    model.fast_attention = False   # the references come from the literal path, the one A1 writes
    ref.update({f"model.{k}": v for k, v in model.state_dict().items()})
    g = torch.Generator().manual_seed(1)

    # A1: the mask, the weights, the output, positions, and a whole model's logits after a prefix
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    pk, pv = (torch.randn(1, 2, 3, 8, generator=g) for _ in range(2))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    x = torch.randint(0, CONFIG["vocab_size"], (2, 6), generator=g)
    prefix = random_kv(g, 3)
    ref.update({"a1.q": q, "a1.k": k, "a1.v": v, "a1.pk": pk, "a1.pv": pv, "a1.prefix_mask": mask,
                "a1.mask": attention_mask(5, 3, mask, "cpu"), "a1.weights": attention_weights(q, k, pk, mask),
                "a1.out": prefix_attention_reference(q, k, v, pk, pv, mask),
                "a1.positions": token_positions(4, 3, mask, "cpu"), "a1.x": x, "a1.prefix": prefix,
                "a1.logits": model(x, prefix_kv=as_pairs(prefix))[0]})

    # A2: a reparameterised prefix, its MLP far from zero
    torch.manual_seed(2)
    reparam = PrefixTuning(model.config, 3, reparam=True, reparam_hidden=8)
    torch.nn.init.normal_(reparam.mlp[2].weight, std=0.5)
    ref.update({f"a2.state.{k}": t for k, t in reparam.state_dict().items()})
    ref["a2.prefix_tensor"] = reparam.prefix_tensor()

    # A3: a soft prompt's keys/values, and its nearest vocabulary tokens
    soft = torch.randn(3, CONFIG["n_embd"], generator=g)
    prompt = PromptTuning(model.config, 3)
    with torch.no_grad():
        prompt.soft_embeds.copy_(soft)
    ids, sims = nearest_tokens(soft, model.transformer.wte.weight, k=2)
    ref.update({"a3.soft_embeds": soft, "a3.kv": stack_pairs(prompt(model)), "a3.nearest_ids": ids,
                "a3.nearest_sims": sims})

    # A4: prefixes of lengths 2, none and 3 in one batch, row i using prefix rows[i]
    p0, p2 = random_kv(g, 2), random_kv(g, 3)
    rows = [2, 0, 1, 2]
    kv, kv_mask = batch_prefixes([as_pairs(p0), None, as_pairs(p2)], rows)
    x4 = torch.randint(0, CONFIG["vocab_size"], (4, 5), generator=g)
    ref.update({"a4.p0": p0, "a4.p2": p2, "a4.rows": torch.tensor(rows), "a4.kv": stack_pairs(kv),
                "a4.mask": kv_mask, "a4.x": x4, "a4.logits": model(x4, prefix_kv=kv, prefix_mask=kv_mask)[0]})

    # A5: the cache after a prompt on top of a prefix, and greedy tokens decoded from it
    p5 = random_kv(g, 3)
    idx = torch.randint(0, CONFIG["vocab_size"], (2, 4), generator=g)
    cache = KVCache(model.config, 2, 3 + 4, as_pairs(p5))
    step(model, idx, cache)
    ref.update({"a5.prefix": p5, "a5.idx": idx,
                "a5.cache": torch.stack([torch.stack([K, V]) for K, V in zip(cache.keys, cache.values)]),
                "a5.tokens": generate(model, idx, 6, temperature=0, prefix_kv=as_pairs(p5))})

    # A6: a batch collated with the prompts masked, and the loss and prefix gradient it gives
    examples = [TaskExample([3, 4, 5, 6, 7], 2), TaskExample([8, 9, 10], 1), TaskExample([11, 12, 13, 14], 4)]
    xb, yb = collate(examples)
    tuned = PrefixTuning(model.config, 2)
    with torch.no_grad():
        tuned.prefix.normal_(0, 1, generator=g)
    _, loss = model(xb, yb, prefix_kv=tuned(model))
    loss.backward()
    ref.update({"a6.tokens": torch.tensor([e.tokens + [-1] * (5 - len(e.tokens)) for e in examples]),
                "a6.n_prompt": torch.tensor([e.n_prompt for e in examples]), "a6.x": xb, "a6.y": yb,
                "a6.prefix": tuned.prefix, "a6.loss": loss, "a6.grad": tuned.prefix.grad})

    # A7: a LoRA layer with a trained-looking B, its merge, and an adapter with a nonzero up-projection
    torch.manual_seed(7)
    lora = LoRALinear(torch.nn.Linear(16, 12), r=2, alpha=4.0)
    torch.nn.init.normal_(lora.B, std=0.5)
    adapter = Adapter(16, 4)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    x7, y7 = torch.randn(3, 16, generator=g), torch.randn(2, 3, 16, generator=g)
    ref.update({f"a7.lora.{k}": t for k, t in lora.state_dict().items()})
    ref.update({f"a7.adapter.{k}": t for k, t in adapter.state_dict().items()})
    ref.update({"a7.x": x7, "a7.lora_out": lora(x7), "a7.merged_weight": lora.merge().weight, "a7.y": y7,
                "a7.adapter_out": adapter(y7)})
    return {k: v if isinstance(v, str) else v.detach().numpy() for k, v in ref.items()}


def main():
    refs = build()
    atomic_write(PATH, lambda f: np.savez_compressed(f, **refs))
    print(f"wrote {len(refs)} arrays to {os.path.relpath(PATH, ROOT)} ({os.path.getsize(PATH)} bytes)")


if __name__ == "__main__":
    main()
