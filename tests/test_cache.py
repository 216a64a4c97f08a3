"""decoding.KVCache: the preallocated cache decodes exactly like a cache grown by torch.cat, and like no
cache at all (GPT.generate); it is allocated once and filled in place; beam search's reordering keeps the
right rows.

The reference is the plainest cached decoder, written here: the cache a list of (key, value) pairs that
each step grows by concatenation (a copy of the whole past every step), fed back to the model as a prefix.
"""
import pytest
import torch

from model import GPT, prefix_length, room_after
from prefix import batch_prefixes
from prefixgpt.decoding import KVCache, generate, step


def sharp_model(config, scale=6.0):
    """A random GPT with its matrices scaled up: greedy decoding then follows clear maxima, not ties
    that rounding could break either way (at GPT-2's init every logit is nearly equal)."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    return model


def random_prefix(config, P, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (1, config.n_head, P, config.head_dim)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(config.n_layer)]


def cat_step(model, idx, past, past_mask):
    """Encode idx (B, T) after `past` (a prefix_kv); return (last logits (B, vocab), [past; new], its mask)."""
    h, present = model.trunk(model.transformer.wte(idx), past, past_mask)
    B, T = idx.shape
    grown = present if past is None else [
        (torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2))
        for (pk, pv), (k, v) in zip(past, present)]
    if past_mask is not None:
        past_mask = torch.cat([past_mask.expand(B, -1), torch.ones(B, T, dtype=torch.bool)], dim=1)
    return model.lm_head(h[:, -1, :]), grown, past_mask


@torch.no_grad()
def generate_with_cat_cache(model, idx, max_new_tokens, prefix_kv=None, prefix_mask=None):
    """Greedy decoding with a cache that grows by concatenation."""
    n_prefix = prefix_length(prefix_kv, prefix_mask)
    window = room_after(n_prefix, model.config.block_size)
    kv, kv_mask, todo, n_cached = prefix_kv, prefix_mask, idx, 0
    for _ in range(max_new_tokens):
        if n_cached + todo.size(1) > window:   # slid: re-encode the window on the prefix alone
            kv, kv_mask, todo, n_cached = prefix_kv, prefix_mask, idx[:, -window:], 0
        logits, kv, kv_mask = cat_step(model, todo, kv, kv_mask)
        n_cached += todo.size(1)
        todo = logits.argmax(dim=-1, keepdim=True)                                       # (B, 1)
        idx = torch.cat([idx, todo], dim=1)
    return idx


def cases(config):
    """(name, prompt, prefix_kv, prefix_mask): no prefix, one prefix, and a mixed batch of lengths 2, 6,
    none and 4 (padded to 6 and masked)."""
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, config.vocab_size, (4, 5), generator=g)
    one = random_prefix(config, 5, seed=1)
    mixed_kv, mixed_mask = batch_prefixes([random_prefix(config, n, seed=n) for n in (2, 6)] + [None]
                                          + [random_prefix(config, 4, seed=4)])
    return [("no prefix", idx, None, None), ("one prefix", idx, one, None),
            ("mixed lengths", idx, mixed_kv, mixed_mask)]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("case", [0, 1, 2])
# graded under A5 with 10 new tokens: decoding past block_size (45) takes longer than a grader should
@pytest.mark.parametrize("new", [pytest.param(10, marks=pytest.mark.a5(points=3)), 45])   # 45: the window slides
def test_preallocated_cache_decodes_exactly_like_the_cat_cache_and_like_no_cache(tiny_config, fast, case, new):
    model = sharp_model(tiny_config)
    model.fast_attention = fast
    name, idx, prefix_kv, prefix_mask = cases(tiny_config)[case]
    cached = generate(model, idx, new, temperature=0, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
    reference = generate_with_cat_cache(model, idx, new, prefix_kv, prefix_mask)
    uncached = model.generate(idx, new, temperature=0, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
    assert cached.shape == (4, 5 + new), name
    assert torch.equal(cached, reference), name
    assert torch.equal(cached, uncached), name
    assert len(set(cached[:, 5:].flatten().tolist())) > 4, "decoding collapsed to a few tokens: a weak test"


def test_a_row_of_a_mixed_batch_decodes_as_it_does_alone_past_block_size(tiny_config):
    """Each row's positions count only its real slots, also after the window has slid."""
    model = sharp_model(tiny_config)
    _, idx, prefix_kv, prefix_mask = cases(tiny_config)[2]
    mixed = generate(model, idx, 40, temperature=0, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
    for b in range(4):
        n = int(prefix_mask[b].sum())
        alone_kv = [(k[b:b + 1, :, :n], v[b:b + 1, :, :n]) for k, v in prefix_kv] if n else None
        alone = generate(model, idx[b:b + 1], 40, temperature=0, prefix_kv=alone_kv)
        assert torch.equal(mixed[b:b + 1], alone), b


@pytest.mark.a5(points=2)
def test_the_cache_is_allocated_once_and_filled_in_place(tiny_config, monkeypatch):
    """Decoding steps write into the same buffers and concatenate nothing (one prefix length: no mask)."""
    model = sharp_model(tiny_config)
    prefix_kv = random_prefix(tiny_config, 3, seed=2)
    cache = KVCache(tiny_config, 2, 3 + 12, prefix_kv)
    step(model, torch.zeros(2, 4, dtype=torch.long), cache)                  # the prompt
    buffers = [t.data_ptr() for t in cache.keys + cache.values]
    cats = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: cats.append(1) or real_cat(*a, **k))
    for _ in range(8):
        step(model, torch.zeros(2, 1, dtype=torch.long), cache)
    assert cache.n == 3 + 4 + 8 and cache.n_cached == 12
    assert [t.data_ptr() for t in cache.keys + cache.values] == buffers
    assert cats == []
    for (pk, pv), k, v in zip(prefix_kv, cache.keys, cache.values):        # the prefix was copied in once
        assert torch.equal(k[:, :, :3], pk.expand(2, -1, -1, -1)) and torch.equal(v[:, :, :3], pv.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="holds 15 slots"):
        step(model, torch.zeros(2, 1, dtype=torch.long), cache)


@pytest.mark.a5(points=2)
def test_reordering_keeps_the_chosen_rows_as_indexing_the_cat_cache_would(tiny_config):
    """Beam search keeps the surviving beams' rows, repeats allowed; later steps see those rows' past."""
    model = sharp_model(tiny_config)
    prefix_kv = random_prefix(tiny_config, 2, seed=5)
    x = torch.randint(0, tiny_config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(6))
    cache = KVCache(tiny_config, 3, 2 + 6, prefix_kv)
    step(model, x, cache)
    _, listed, _ = cat_step(model, x, prefix_kv, None)                         # the cat cache of the same
    rows = torch.tensor([2, 0, 2, 1])
    cache.reorder(rows)
    listed = [(k[rows], v[rows]) for k, v in listed]
    for (k, v), K, V in zip(listed, cache.keys, cache.values):
        assert torch.equal(K[:, :, :6], k) and torch.equal(V[:, :, :6], v)
    nxt = torch.randint(0, tiny_config.vocab_size, (4, 1), generator=torch.Generator().manual_seed(7))
    assert torch.equal(step(model, nxt, cache), cat_step(model, nxt, listed, None)[0])


def test_weights_cast_once_decode_as_autocast_does_bit_for_bit(tiny_config):
    # autocast rounds each fp32 weight to the same bf16 numbers at every step; cast_for_inference does it
    # once, so logits and greedy tokens must be identical, and the model it copied stays as it was
    from prefixgpt.decoding import cast_for_inference
    model = sharp_model(tiny_config, scale=2.0)
    kv = random_prefix(tiny_config, 3, seed=4)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 5))
    cast = cast_for_inference(model, "bfloat16")
    assert cast.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16 and cast.lm_head.weight.dtype == torch.bfloat16
    assert cast.transformer.wte.weight.dtype == torch.float32 and cast.transformer.ln_f.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_logits, _ = model(idx, prefix_kv=kv)
        out_logits, _ = cast(idx, prefix_kv=kv)
        ref = generate(model, idx, 12, temperature=0, prefix_kv=kv)
        out = generate(cast, idx, 12, temperature=0, prefix_kv=kv)
    assert torch.equal(out_logits, ref_logits) and torch.equal(out, ref)
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.dtype == torch.float32
    assert cast_for_inference(model, "float32") is model
