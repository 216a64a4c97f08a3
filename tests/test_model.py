"""model.py: attention with a prefix equals attention over prepended tokens; both attention paths agree;
the KV cache is the prefix mechanism and changes no output."""
import pytest
import torch

from model import GPT, GPTConfig, attention_mask
from prefixgpt.decoding import generate


def random_prefix(config, P, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, config.n_head, P, config.head_dim)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(config.n_layer)]


def both_paths(model, fn):
    """Run fn(model) with the fast (SDPA) path and with the literal reference path."""
    model.fast_attention = True
    fast = fn(model)
    model.fast_attention = False
    ref = fn(model)
    model.fast_attention = True
    return fast, ref


# 1 -----------------------------------------------------------------------------------------------
@pytest.mark.a1(points=2)
@pytest.mark.parametrize("fast", [True, False])
def test_prefix_from_real_tokens_equals_prepending_them(tiny_config, tiny_model, fast):
    tiny_model.fast_attention = fast
    torch.manual_seed(1)
    w = torch.randint(0, tiny_config.vocab_size, (2, 6))   # the words the prefix is made of
    x = torch.randint(0, tiny_config.vocab_size, (2, 9))
    y = torch.randint(0, tiny_config.vocab_size, (2, 9))
    prefix_kv = tiny_model.key_values(w)
    assert [tuple(k.shape) for k, _ in prefix_kv] == [(2, 4, 6, 8)] * 3
    logits, loss = tiny_model(x, y, prefix_kv=prefix_kv)

    # the same thing spelled out: run on concat(w, x), keep the last T positions, ignore w in the loss
    full_logits, full_loss = tiny_model(torch.cat([w, x], 1), torch.cat([torch.full_like(w, -1), y], 1))
    torch.testing.assert_close(logits, full_logits[:, -9:], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=0)


@pytest.mark.a1(points=1)
def test_key_values_after_a_prefix_continue_the_sequence(tiny_config, tiny_model):
    """key_values(b, prefix_kv=key_values(a)) are the keys/values of b inside concat(a, b)."""
    a, b = torch.randint(0, tiny_config.vocab_size, (1, 4)), torch.randint(0, tiny_config.vocab_size, (1, 5))
    chained = tiny_model.key_values(b, prefix_kv=tiny_model.key_values(a))
    whole = tiny_model.key_values(torch.cat([a, b], 1))
    for (k1, v1), (k2, v2) in zip(chained, whole):
        torch.testing.assert_close(k1, k2[:, :, 4:], atol=1e-5, rtol=0)
        torch.testing.assert_close(v1, v2[:, :, 4:], atol=1e-5, rtol=0)


# 2 -----------------------------------------------------------------------------------------------
@pytest.mark.a1(points=2)
@pytest.mark.parametrize("P", [0, 1, 3, 10])
@pytest.mark.parametrize("T", [1, 7])
def test_fast_path_equals_reference_path(tiny_model, tiny_config, P, T):
    x = torch.randint(0, tiny_config.vocab_size, (3, T))
    prefix_kv = random_prefix(tiny_config, P) if P else None
    fast, ref = both_paths(tiny_model, lambda m: m(x, prefix_kv=prefix_kv)[0])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.a1(points=1)
def test_fast_path_equals_reference_path_with_a_padding_mask(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (2, 5))
    prefix_kv = random_prefix(tiny_config, 4, batch=2)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    fast, ref = both_paths(tiny_model, lambda m: m(x, prefix_kv=prefix_kv, prefix_mask=mask)[0])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.a1(points=1)
def test_the_mask_is_causal_from_the_bottom_right():
    M = attention_mask(T=3, P=2, prefix_mask=None, device="cpu")[0, 0].int().tolist()
    # keys:   p0 p1 x0 x1 x2   — every query sees both prefix slots, then the tokens up to itself
    assert M == [[1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 0],
                 [1, 1, 1, 1, 1]]


# 3 -----------------------------------------------------------------------------------------------
def test_no_prefix_and_empty_prefix_are_the_plain_model(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (2, 8))
    plain = tiny_model(x)[0]
    assert torch.equal(tiny_model(x, prefix_kv=None)[0], plain)
    assert torch.equal(tiny_model(x, prefix_kv=random_prefix(tiny_config, 0))[0], plain)


def test_batch_one_prefix_broadcasts(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (3, 6))
    one = random_prefix(tiny_config, 4, batch=1)
    tiled = [(k.expand(3, -1, -1, -1).clone(), v.expand(3, -1, -1, -1).clone()) for k, v in one]
    torch.testing.assert_close(tiny_model(x, prefix_kv=one)[0], tiny_model(x, prefix_kv=tiled)[0],
                               atol=0, rtol=0)


def test_prefix_changes_the_output(tiny_model, tiny_config):
    """Guards the tests above against a model that silently ignores prefix_kv."""
    x = torch.randint(0, tiny_config.vocab_size, (1, 6))
    assert not torch.allclose(tiny_model(x)[0], tiny_model(x, prefix_kv=random_prefix(tiny_config, 3))[0])


# 4 -----------------------------------------------------------------------------------------------
def test_prefix_plus_sequence_longer_than_block_size_raises(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (1, tiny_config.block_size - 2))
    tiny_model(x, prefix_kv=random_prefix(tiny_config, 2))  # 2 + 30 = 32 = block_size fits
    with pytest.raises(ValueError, match=r"3 \+ sequence length 30 = 33 exceeds block_size 32"):
        tiny_model(x, prefix_kv=random_prefix(tiny_config, 3))
    with pytest.raises(ValueError, match="block_size 32"):
        tiny_model(torch.randint(0, tiny_config.vocab_size, (1, tiny_config.block_size + 1)))


def test_prefix_for_another_model_is_refused(tiny_model):
    other = GPTConfig(n_layer=3, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match="another model"):
        tiny_model(torch.zeros(1, 4, dtype=torch.long), prefix_kv=random_prefix(other, 2))
    with pytest.raises(ValueError, match="2 layers but the model has 3"):
        tiny_model(torch.zeros(1, 4, dtype=torch.long),
                   prefix_kv=random_prefix(GPTConfig(n_layer=2, n_head=4, n_embd=32), 2))


# 5 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("P", [0, 5])
def test_greedy_generation_with_cache_equals_without(tiny_model, tiny_config, P):
    # 40 new tokens run well past block_size 32, so the sliding window is exercised too
    prefix_kv = random_prefix(tiny_config, P) if P else None
    idx = torch.randint(0, tiny_config.vocab_size, (2, 4))
    cached = generate(tiny_model, idx, 40, temperature=0, prefix_kv=prefix_kv)
    uncached = tiny_model.generate(idx, 40, temperature=0, prefix_kv=prefix_kv)
    assert cached.shape == (2, 44)
    assert torch.equal(cached, uncached)


def test_uncached_generation_is_argmax_of_forward(tiny_model, tiny_config):
    """Ties GPT.generate (no cache) to forward(), so test 5 compares against the model itself."""
    prefix_kv = random_prefix(tiny_config, 3)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 5))
    out = tiny_model.generate(idx, 6, temperature=0, prefix_kv=prefix_kv)
    for t in range(5, 11):
        logits, _ = tiny_model(out[:, :t], prefix_kv=prefix_kv)
        assert out[0, t] == logits[0, -1].argmax()


@pytest.mark.a5(points=2)
def test_sampling_with_cache_equals_without_for_the_same_seed(tiny_config, tiny_model):
    idx = torch.randint(0, tiny_config.vocab_size, (2, 3))
    torch.manual_seed(7)
    a = generate(tiny_model, idx, 20, temperature=0.8, top_k=10)
    torch.manual_seed(7)
    b = tiny_model.generate(idx, 20, temperature=0.8, top_k=10)
    assert torch.equal(a, b)


def test_generation_stops_at_stop_token(tiny_config, tiny_model):
    idx = torch.randint(0, tiny_config.vocab_size, (1, 3))
    first = generate(tiny_model, idx, 1, temperature=0)[0, -1].item()
    out = generate(tiny_model, idx, 10, temperature=0, stop_token=first)
    assert out.shape == (1, 4)


def test_weights_are_tied_and_named_like_gpt2(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    names = set(tiny_model.state_dict())
    for name in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                 "transformer.h.0.ln_2.weight", "transformer.h.0.mlp.c_fc.weight",
                 "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"]:
        assert name in names


def test_gelu_is_exact_by_default_and_gpt2s_tanh_form_on_request():
    import math
    from model import MLP
    x = torch.linspace(-4, 4, 101)
    exact = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8)).transformer.h[0].mlp.gelu
    tanh = MLP(GPTConfig(n_layer=1, n_head=1, n_embd=8, gelu="tanh")).gelu
    torch.testing.assert_close(exact(x), x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), atol=1e-6, rtol=0)
    gpt2 = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(tanh(x), gpt2, atol=1e-6, rtol=0)
    assert (exact(x) - tanh(x)).abs().max() > 1e-4   # the two differ: the setting matters for GPT-2 weights
    with pytest.raises(ValueError, match="gelu must be 'exact' or 'tanh'"):
        GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, gelu="relu"))


# -- activation checkpointing (--grad_checkpoint) ------------------------------------------------------

def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn() runs."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved.values())


@pytest.mark.parametrize("what", ["prefix", "fine-tuning"])
def test_grad_checkpoint_gives_the_same_loss_and_gradients_with_less_saved(tiny_config, what):
    from dataclasses import replace

    from prefix import PrefixTuning, freeze
    torch.manual_seed(0)
    model = GPT(replace(tiny_config, dropout=0.1)).train()     # dropout: the rerun must replay its masks
    prefix = PrefixTuning(model.config, 4) if what == "prefix" else None
    if prefix is not None:
        freeze(model)
    trains = list((prefix or model).parameters())
    x = torch.randint(0, tiny_config.vocab_size, (3, 20))
    runs = {}
    for on in (False, True):
        model.grad_checkpoint = on
        torch.manual_seed(1)
        loss, saved = saved_bytes(lambda: model(x, x, prefix_kv=None if prefix is None else prefix(model))[1])
        grads = torch.autograd.grad(loss, trains)
        runs[on] = (loss, grads, saved)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=0, atol=0)
    for g_on, g_off in zip(runs[True][1], runs[False][1]):
        torch.testing.assert_close(g_on, g_off, rtol=1e-6, atol=1e-7)
    assert runs[True][2] < runs[False][2] / 2, (runs[True][2], runs[False][2])   # what the backward keeps


def test_grad_checkpoint_changes_nothing_without_gradients(tiny_model):
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 9))
    ref, _ = tiny_model(x)
    tiny_model.grad_checkpoint = True
    with torch.no_grad():
        out, _ = tiny_model(x)
    assert torch.equal(out, ref) and generate(tiny_model, x, 3, temperature=0).shape == (2, 12)


# -- the output head padded to a multiple of 64 (GPT.head_logits) ----------------------------------------

def test_the_padded_head_gives_the_same_logits_loss_and_gradients(tiny_model):
    assert tiny_model.config.vocab_size % 64                     # 61: padded to 64 inside the product
    x = torch.randint(0, 61, (2, 9))
    y = torch.randint(0, 61, (2, 9))
    y[0, :3] = -1
    runs = {}
    for pad in (False, True):
        tiny_model.pad_head = pad
        tiny_model.zero_grad()
        logits, loss = tiny_model(x, y)
        loss.backward()
        runs[pad] = (logits.detach(), loss.detach(), tiny_model.lm_head.weight.grad.clone())
    assert runs[True][0].shape == (2, 9, 61)                     # never a column past the vocabulary
    for a, b in zip(runs[True], runs[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert tiny_model.lm_head.weight.grad.shape == (61, 32) and tiny_model.transformer.wte.weight.shape == (61, 32)
    padded = tiny_model.head_logits(torch.randn(1, 2, 32))
    assert padded.shape == (1, 2, 64) and torch.isneginf(padded[..., 61:]).all()


def test_the_head_is_padded_on_a_gpu_only_unless_asked(tiny_model):
    h = torch.randn(1, 2, 32)
    assert tiny_model.pad_head is None and tiny_model.head_logits(h).shape == (1, 2, 61)   # CPU: as it is
