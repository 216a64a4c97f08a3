"""
model.py — a minimal GPT whose attention blocks take prefix key/values natively.

One idea runs through this file: a *prefix* (Li & Liang 2021) and a *KV cache* are the same object.
Both are, for every layer, keys and values of positions that come *before* the tokens being processed:

    attention with a prefix:   softmax(Q·[P_k; K]ᵀ/√d + M)·[P_v; V]

where P_k, P_v are "past" keys/values (P of them), K, V come from the T current tokens, and the mask M
lets every current token see all past slots and, causally, the current tokens. A learned prefix is a
past that was trained; a KV cache is a past that was computed. `GPT.generate` starts its cache *from*
the prefix and appends to it, so the two share every line of code. (The cache, `KVCache`, holds that
past in buffers allocated once and written in place, so appending copies nothing.)

Shapes used throughout (B batch, T tokens, P prefix slots, C = n_embd, nh = n_head, hd = head_dim = C/nh):
    prefix_kv   : sequence of n_layer pairs (key, value), each (B or 1, nh, P, hd)
    prefix_mask : optional (B, P) bool, True where a slot is real; used to batch prefixes of
                  different lengths (shorter ones padded at the end). Row b's tokens sit at
                  positions n_valid[b] .. n_valid[b]+T-1, as if that row ran alone.

Module names follow GPT-2 (transformer.wte, wpe, h[i].ln_1, attn.c_attn, ...), so a GPT-2 checkpoint's
tensors keep their names here. Two things do not carry over as they are: GPT-2's Conv1D layers store
their weights transposed ((in, out), where nn.Linear has (out, in)), and GPT-2's weights need
gelu="tanh". `GPT.from_pretrained` (in gpt2.py) does both.

This module knows the model and nothing else: no files, devices, tokenizers or training.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

KV = tuple[torch.Tensor, torch.Tensor]  # (key, value), each (B or 1, nh, L, hd)


def _allowed(default, **rules):
    """A field with the values it allows beside it (cli.py checks them where settings are parsed)."""
    return field(default=default, metadata=rules)


@dataclass
class GPTConfig:
    block_size: int = _allowed(256, min=1)   # most positions (prefix slots included) the model can see
    vocab_size: int = _allowed(256, min=0)   # 256 = byte-level tokenizer; 50257 = GPT-2 BPE (0: the data's)
    n_layer: int = _allowed(4, min=1)
    n_head: int = _allowed(4, min=1)
    n_embd: int = _allowed(128, min=1)
    dropout: float = _allowed(0.0, min=0.0, max=0.99)
    bias: bool = True       # GPT-2 has biases in Linear and LayerNorm layers
    gelu: str = _allowed("exact", choices=("exact", "tanh"))
    # "exact" x·Φ(x), nanoGPT's (its checkpoints load as they are); "tanh", GPT-2's approximation

    def validate(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                             "each head gets n_embd / n_head dimensions")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def prefix_length(prefix_kv, prefix_mask=None) -> int:
    """How many positions a prefix takes: P, or with a mask (mixed lengths) the longest row's real slots;
    0 for None. With a mask this reads the mask's values (a GPU sync): callers compute it once per batch."""
    if prefix_kv is None:
        return 0
    if prefix_mask is None:
        return prefix_kv[0][0].size(2)
    return int(prefix_mask.sum(1).max()) if prefix_mask.numel() else 0


def room_after(n_prefix: int, block_size: int) -> int:
    """Positions left for tokens once a prefix of n_prefix slots is in the context."""
    return block_size - n_prefix


def token_positions(T: int, n_prefix: int, prefix_mask, device) -> torch.Tensor:
    """Positions of T tokens that follow a prefix: (1, T), or (B, T) with a mask (mixed lengths).

    The prefix occupies positions 0..n-1 and the tokens n..n+T-1, where n counts a row's *real* slots
    (padding slots take no position), so every row is numbered as it would be alone."""
    if n_prefix == 0 and prefix_mask is None:   # the plain model (P = 0 is exactly it)
        return torch.arange(T, device=device)[None]
    # BEGIN SOLUTION A1.3: tokens start after the row's real prefix slots: (1, T), or (B, T) with a mask
    if prefix_mask is None:
        return torch.arange(n_prefix, n_prefix + T, device=device)[None]                   # (1, T)
    return prefix_mask.sum(dim=1, keepdim=True) + torch.arange(T, device=device)            # (B, T)
    # END SOLUTION


# ----------------------------------------------------------------------------------------------
# Attention with past (prefix or cache) keys and values: the one equation, two ways to compute it.

def attention_mask(T: int, P: int, prefix_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean mask M, True where query t may attend key s. Shape (B or 1, 1, T, P+T).

    Keys are laid out [prefix slots (P) ; current tokens (T)]. Every query sees every *real* prefix slot
    (prefix_mask, or all P when it is None) and the current tokens up to itself. This is a causal mask
    aligned to the bottom-right corner: query t is the token at key index P+t.
    """
    # BEGIN SOLUTION A1.1: each query sees every real prefix slot, then the tokens up to itself
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()           # (T, T)
    if prefix_mask is None:
        prefix_mask = torch.ones(1, P, dtype=torch.bool, device=device)         # (1, P)
    B = prefix_mask.size(0)
    prefix = prefix_mask[:, None, None, :].expand(B, 1, T, P)                   # (B, 1, T, P)
    return torch.cat([prefix, causal.expand(B, 1, T, T)], dim=-1)               # (B, 1, T, P+T)
    # END SOLUTION


def join_prefix(prefix_x, x):
    """[P_x; X] along the position axis. prefix_x (B or 1, nh, P, hd), x (B, nh, T, hd) → (B, nh, P+T, hd).
    The prefix takes x's dtype: under bf16 autocast the tokens' keys are bf16 while a trained prefix is
    fp32, and attention kernels refuse a mix."""
    return torch.cat([prefix_x.to(x.dtype).expand(x.size(0), -1, -1, -1), x], dim=2)


def attention_weights(q, k, prefix_k=None, prefix_mask=None):
    """softmax(Q·[P_k; K]ᵀ/√d + M): how much each query takes from each key, prefix slots first.

    q        : (B, nh, T, hd)   from the current tokens
    k        : (B, nh, T, hd)   from the current tokens, or (B, nh, P+T, hd) when the past already sits in
               front of them (a KVCache: then prefix_k is None)
    prefix_k : (B or 1, nh, P, hd) or None
    returns  : (B, nh, T, P+T), each row sums to 1; 0 where M forbids a key
    Shared by the reference path and by analysis.py, which reads how much of it the prefix takes.
    """
    # BEGIN SOLUTION A1.2: join the prefix keys in front, scores over sqrt(hd), add M (-inf), softmax over keys
    T, hd = q.size(2), q.size(3)
    if prefix_k is not None:
        k = join_prefix(prefix_k, k)                                            # [P_k; K] (B, nh, P+T, hd)
    P = k.size(2) - T
    allowed = attention_mask(T, P, prefix_mask, q.device)                      # (B|1, 1, T, P+T)
    M = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd) + M                       # (B, nh, T, P+T)
    return torch.softmax(scores, dim=-1)
    # END SOLUTION


def prefix_attention_reference(q, k, v, prefix_k, prefix_v, prefix_mask=None, dropout_p=0.0):
    """softmax(Q·[P_k; K]ᵀ/√d + M)·[P_v; V], written out literally (the readable path).

    q                  : (B, nh, T, hd)   from the current tokens
    k, v               : (B, nh, T, hd)   from the current tokens, or (B, nh, P+T, hd) when the past
                         already sits in front of them (a KVCache: then prefix_k, prefix_v are None)
    prefix_k, prefix_v : (B or 1, nh, P, hd) or None   prefix (learned, or a cache) keys and values
    returns            : (B, nh, T, hd)
    """
    if prefix_v is not None:
        v = join_prefix(prefix_v, v)                                            # [P_v; V] (B, nh, P+T, hd)
    weights = F.dropout(attention_weights(q, k, prefix_k, prefix_mask), p=dropout_p)   # (B, nh, T, P+T)
    return weights @ v                                                          # (B, nh, T, hd)


def prefix_attention_fast(q, k, v, prefix_k, prefix_v, prefix_mask=None, dropout_p=0.0):
    """The same result through F.scaled_dot_product_attention, choosing a mask that keeps a fused kernel.

    `is_causal=True` aligns the causal triangle to the *top-left*, which is wrong once keys outnumber
    queries (query 0 must see all P past slots, not just key 0). So:
      - no prefix:            is_causal=True (square, top-left == bottom-right);
      - one new token:        no mask at all (the newest token may see everything before it);
      - prefix, one length:   a lower-right causal bias, which flash / memory-efficient kernels support;
      - mixed lengths (prefix_mask): an explicit boolean mask.
    k, v may already hold the past in front of the current tokens, as prefix_attention_reference says.
    """
    B, nh, T, hd = q.shape
    if prefix_k is not None:
        k = join_prefix(prefix_k, k)                                            # (B, nh, P+T, hd)
        v = join_prefix(prefix_v, v)
    P = k.size(2) - T
    if P == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if prefix_mask is not None:
        mask = attention_mask(T, P, prefix_mask, q.device)
    elif T == 1:
        mask = None
    else:
        # imported here, not at the top: that module loads torch._dynamo, about a second of start-up
        # that every script would pay, though only a prefix or cache of several new tokens needs it
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(T, P + T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# ----------------------------------------------------------------------------------------------
# A KV cache that grows in place: the prefix that keeps growing, in buffers allocated once.

class KVCache:
    """Every layer's keys and values in buffers of (B, nh, capacity, hd), allocated once, filled in place.

    Slots 0..P-1 hold the prefix (padded slots too; `mask` says which are real), copied in once. Each
    step writes its T new tokens' keys/values at slots n..n+T-1 and attention reads slots 0..n+T-1 as
    one view: [past; new] with nothing copied. (Growing a list of tensors with torch.cat, GPT.extend,
    copies the whole past in every layer at every step; that took 43% of batched decoding.)

    A block sees cache[i] as its prefix_kv, so the cache travels down the same path as a learned prefix.
    This class knows only buffers and lengths: the model decides what goes in and when it restarts.
    """

    def __init__(self, config: GPTConfig, batch: int, capacity: int, prefix_kv=None, prefix_mask=None,
                 n_prefix: int | None = None):
        self.batch, self.capacity, self.n_layer = batch, capacity, config.n_layer
        self.prefix_kv = prefix_kv          # copied into a layer's buffers at that layer's first write
        self.n_prefix_slots = 0 if prefix_kv is None else prefix_kv[0][0].size(2)    # P, padded slots included
        if self.n_prefix_slots > capacity:
            raise ValueError(f"a cache of {capacity} slots cannot hold a prefix of {self.n_prefix_slots}")
        # the longest row's real prefix slots; a Python int, so decoding never waits on the GPU for it
        self.n_prefix = prefix_length(prefix_kv, prefix_mask) if n_prefix is None else n_prefix
        self.n = self.n_prefix_slots        # slots filled so far
        self.keys: list = [None] * config.n_layer     # each (B, nh, capacity, hd) once written
        self.values: list = [None] * config.n_layer
        self.mask = None                    # (B, capacity) bool: which filled slots are real; None = all
        if prefix_mask is not None:
            self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=prefix_mask.device)
            self.mask[:, :self.n_prefix_slots] = prefix_mask

    @property
    def n_cached(self) -> int:
        """Tokens held after the prefix."""
        return self.n - self.n_prefix_slots

    @property
    def n_real(self) -> int:
        """Positions the longest row has used: its real prefix slots plus the cached tokens."""
        return self.n_prefix + self.n_cached

    def __len__(self):
        return self.n_layer

    def __getitem__(self, layer: int) -> "LayerCache":
        return LayerCache(self, layer)

    def past_mask(self):
        """(B, n) bool over the filled slots, or None when every slot is real (one prefix length)."""
        return None if self.mask is None else self.mask[:, :self.n]

    def append(self, layer: int, k, v):
        """Write k, v (B, nh, T, hd) at slots n..n+T-1 of this layer; return [past; new] as views of the
        buffers, each (B, nh, n+T, hd). The fill length moves on in advance(), once every layer wrote."""
        n, T = self.n, k.size(2)
        if n + T > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} slots; {n} filled + {T} new do not fit")
        # BEGIN SOLUTION A5.1: at first allocate, copy the prefix to slots 0..P-1; put k, v at n..n+T-1; return views
        if self.keys[layer] is None:
            # allocated at the first write, in the keys' own dtype (bf16 under autocast, where the
            # prefix may be fp32: the copy casts it, as join_prefix does)
            shape = (self.batch, k.size(1), self.capacity, k.size(3))
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
            if self.prefix_kv is not None:
                pk, pv = self.prefix_kv[layer]                                  # (B or 1, nh, P, hd)
                self.keys[layer][:, :, :self.n_prefix_slots] = pk               # broadcast over rows
                self.values[layer][:, :, :self.n_prefix_slots] = pv
        K, V = self.keys[layer], self.values[layer]
        K[:, :, n:n + T] = k
        V[:, :, n:n + T] = v
        return K[:, :, :n + T], V[:, :, :n + T]
        # END SOLUTION

    def advance(self, T: int):
        """T new tokens are in every layer: count them as filled (and as real, in every row)."""
        if self.mask is not None:
            self.mask[:, self.n:self.n + T] = True
        self.n += T

    def reset(self):
        """Back to the prefix alone (its slots were never overwritten): for re-encoding a slid window."""
        self.n = self.n_prefix_slots

    def reorder(self, rows: torch.Tensor):
        """Keep batch rows `rows` (B', repeats allowed), in that order: beam search's surviving beams.
        Only the filled slots are copied."""
        def take(buf):                                         # (B, nh, capacity, hd) → (B', nh, capacity, hd)
            out = buf.new_empty((len(rows),) + buf.shape[1:])
            out[:, :, :self.n] = buf[rows, :, :self.n]
            return out
        self.keys = [None if b is None else take(b) for b in self.keys]
        self.values = [None if b is None else take(b) for b in self.values]
        if self.mask is not None:
            mask = self.mask.new_zeros(len(rows), self.capacity)
            mask[:, :self.n] = self.mask[rows, :self.n]
            self.mask = mask
        self.batch = len(rows)


class LayerCache:
    """cache[i]: one layer's handle on a KVCache, what a Block receives as its prefix_kv when decoding."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer

    def append(self, k, v):
        return self.cache.append(self.layer, k, v)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # Q, K, V at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, x):
        """x (B, T, C) → q, k, v, each (B, nh, T, hd). Also what analysis.py reads a layer's queries from."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                                # 3 × (B, T, C)
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def forward(self, x, prefix_kv: KV | None, prefix_mask, fast: bool):
        """x: (B, T, C) → (y (B, T, C), (k, v) of these T tokens, each (B, nh, T, hd)).
        prefix_kv here is this layer's one (key, value) pair, or its LayerCache when decoding."""
        B, T, C = x.shape
        q, k, v = self.heads(x)
        present = (k, v)
        if isinstance(prefix_kv, LayerCache):
            # a cache: these keys/values go in place after the past, and attention gets [past; new]
            # as k, v (B, nh, n+T, hd) with no prefix left to join (prefix_mask covers the past's n slots)
            k, v = prefix_kv.append(k, v)
            prefix_k = prefix_v = None
        else:
            prefix_k, prefix_v = prefix_kv if prefix_kv is not None else (None, None)
        attend = prefix_attention_fast if fast else prefix_attention_reference
        dropout_p = self.attn_dropout if self.training else 0.0
        y = attend(q, k, v, prefix_k, prefix_v, prefix_mask, dropout_p)         # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                        # heads side by side
        return self.resid_dropout(self.c_proj(y)), present


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        if config.gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {config.gelu!r}")
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, prefix_kv, prefix_mask, fast):
        a, present = self.attn(self.ln_1(x), prefix_kv, prefix_mask, fast)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


# ----------------------------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.fast_attention = True  # False: the literal softmax(...) path; tests hold the two equal
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2·n_layer), since each block adds two of them
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True) -> int:
        """Parameter count (the tied lm_head counted once); position embeddings excluded by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # -- the shared trunk ------------------------------------------------------------------------

    def check_prefix(self, prefix_kv, prefix_mask=None):
        """Raise a clear ValueError when prefix_kv does not fit this model. Returns P."""
        cfg = self.config
        if len(prefix_kv) != cfg.n_layer:
            raise ValueError(f"prefix_kv has {len(prefix_kv)} layers but the model has {cfg.n_layer}: "
                             "was the prefix built for another model?")
        P = prefix_kv[0][0].size(2)
        for k, v in prefix_kv:
            if k.dim() != 4 or k.shape[1:] != (cfg.n_head, P, cfg.head_dim) or v.shape != k.shape:
                raise ValueError(f"prefix key/value of shape {tuple(k.shape)}/{tuple(v.shape)} does not fit "
                                 f"(B, n_head={cfg.n_head}, P={P}, head_dim={cfg.head_dim}): "
                                 "was the prefix built for another model?")
        if prefix_mask is not None and (prefix_mask.dim() != 2 or prefix_mask.size(1) != P):
            raise ValueError(f"prefix_mask must be (B, P={P}), got {tuple(prefix_mask.shape)}")
        return P

    def trunk(self, tok_emb, prefix_kv=None, prefix_mask=None, n_prefix: int | None = None):
        """Run the blocks on input embeddings that follow an optional prefix (learned, or a cache).

        tok_emb: (B, T, C) → (h (B, T, C) after ln_f, present: n_layer pairs (k, v) each (B, nh, T, hd)).
        prefix_kv may be a KVCache: the tokens' keys/values are then written into it (it grows in place).
        n_prefix: prefix_length(prefix_kv, prefix_mask) when the caller already knows it (decoding
        does, and so saves a GPU sync per token); worked out here otherwise.
        """
        B, T, _ = tok_emb.shape
        cache = prefix_kv if isinstance(prefix_kv, KVCache) else None
        if cache is not None:
            # the cache knows its filled slots' mask and the longest row's length without a GPU read
            prefix_mask, n_prefix = cache.past_mask(), cache.n_real
        elif prefix_kv is not None and self.check_prefix(prefix_kv, prefix_mask) == 0:
            prefix_kv, prefix_mask = None, None  # P = 0 is exactly the plain model
        if n_prefix is None:
            n_prefix = prefix_length(prefix_kv, prefix_mask)
        if n_prefix + T > self.config.block_size:
            raise ValueError(f"prefix length {n_prefix} + sequence length {T} = {n_prefix + T} exceeds "
                             f"block_size {self.config.block_size}: shorten the input or the prefix")
        pos = token_positions(T, n_prefix, prefix_mask, tok_emb.device)                  # (1 or B, T)
        x = self.transformer.drop(tok_emb + self.transformer.wpe(pos))                  # (B, T, C)
        present = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, None if prefix_kv is None else prefix_kv[i], prefix_mask, self.fast_attention)
            present.append(kv)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x), present

    # -- public API --------------------------------------------------------------------------------

    def forward(self, idx, targets=None, prefix_kv=None, prefix_mask=None):
        """idx (B, T) token ids → (logits (B, T, vocab), loss or None). Targets of -1 are ignored."""
        h, _ = self.trunk(self.transformer.wte(idx), prefix_kv, prefix_mask)
        logits = self.lm_head(h)                                                         # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def key_values(self, idx=None, prefix_kv=None, prefix_mask=None, embeds=None) -> list[KV]:
        """The per-layer (key, value) that tokens `idx` (or input embeddings `embeds`, (B, T, C)) produce
        after an optional prefix: each (B, n_head, T, head_dim). This is what a KV cache holds; it
        initialises a prefix from real words, and turns prompt-tuning embeddings into a prefix."""
        if embeds is None:
            embeds = self.transformer.wte(idx)
        _, present = self.trunk(embeds, prefix_kv, prefix_mask)
        return present

    @staticmethod
    def extend(prefix_kv: list[KV] | None, present: list[KV], batch: int) -> list[KV]:
        """[prefix; present] per layer along the position axis: how a cache (a computed prefix) grows."""
        if prefix_kv is None:
            return present
        return [(join_prefix(pk.expand(batch, -1, -1, -1), k), join_prefix(pv.expand(batch, -1, -1, -1), v))
                for (pk, pv), (k, v) in zip(prefix_kv, present)]

    def step(self, idx, prefix_kv, prefix_mask=None, n_prefix: int | None = None):
        """Encode tokens idx (B, T) after prefix_kv; return (last-position logits (B, vocab), the grown
        prefix_kv, the grown prefix_mask). A cache is simply a prefix that keeps growing:
          - a KVCache grows in place (its mask inside it) and comes back as it is, with mask None;
          - a list of (key, value) pairs grows by GPT.extend, a copy of the whole past: the plain way,
            which the tests keep as the reference the KVCache must match token for token."""
        h, present = self.trunk(self.transformer.wte(idx), prefix_kv, prefix_mask, n_prefix)
        logits = self.lm_head(h[:, -1, :])                                               # (B, vocab)
        if isinstance(prefix_kv, KVCache):
            return logits, prefix_kv, None
        B, T = idx.shape
        grown = self.extend(prefix_kv, present, B)
        if prefix_mask is not None:
            prefix_mask = torch.cat([prefix_mask.expand(B, -1),
                                     torch.ones(B, T, dtype=torch.bool, device=idx.device)], dim=1)
        return logits, grown, prefix_mask

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, prefix_kv=None,
                 prefix_mask=None, use_cache=True, stop_token=None):
        """Append max_new_tokens to idx (B, T). temperature=0 is greedy (argmax).

        With the cache, the prompt is encoded once on top of the prefix and each new token costs one
        position. The cache is a KVCache that starts as a copy of the prefix, sized once for the whole
        call. Past block_size the context slides: only the last (block_size - P) tokens stay visible
        (the prefix always does). Sliding shifts every token's position, so cached keys go stale;
        from then on each step re-encodes the window (as slow as no cache, but never wrong).
        stop_token: stop once every row has produced it (rows keep decoding until then).
        """
        if prefix_kv is not None and self.check_prefix(prefix_kv, prefix_mask) == 0:
            prefix_kv, prefix_mask = None, None
        n_prefix = prefix_length(prefix_kv, prefix_mask)          # one GPU read per call, not per token
        window = room_after(n_prefix, self.config.block_size)
        if window < 1:
            raise ValueError(f"prefix length {n_prefix} leaves no room in block_size {self.config.block_size}")
        with torch.inference_mode():
            # inference mode, not just no_grad: tensors skip autograd's bookkeeping (version counters),
            # ~10% of a small model's decoding step. What it makes are "inference tensors", which may
            # not be changed in place later, so the caller gets a normal copy of the tokens.
            out = self._decode(idx, max_new_tokens, temperature, top_k, prefix_kv, prefix_mask, use_cache,
                               stop_token, n_prefix, window)
        return out.clone()

    def _decode(self, idx, max_new_tokens, temperature, top_k, prefix_kv, prefix_mask, use_cache, stop_token,
                n_prefix, window):
        """generate's loop, in its arguments' terms; returns idx with the new tokens, (B, T + new)."""
        B, t = idx.shape
        out = idx.new_empty(B, t + max_new_tokens)               # the tokens, also filled in place
        out[:, :t] = idx
        cache = None
        if use_cache:
            slots = 0 if prefix_kv is None else prefix_kv[0][0].size(2)
            cache = KVCache(self.config, B, slots + min(window, t + max_new_tokens), prefix_kv, prefix_mask,
                            n_prefix)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        todo = idx
        for _ in range(max_new_tokens):
            if cache is None:   # no cache: every step encodes the visible window on top of the prefix
                h, _ = self.trunk(self.transformer.wte(out[:, max(0, t - window):t]), prefix_kv, prefix_mask,
                                  n_prefix)
                logits = self.lm_head(h[:, -1, :])
            else:
                if cache.n_cached + todo.size(1) > window:
                    cache.reset()                                 # (re-)encode the window on the prefix alone
                    todo = out[:, t - window:t]
                logits, _, _ = self.step(todo, cache)
            next_id = sample_next(logits, temperature, top_k)                           # (B, 1)
            out[:, t:t + 1] = next_id
            t += 1
            todo = next_id
            if stop_token is not None:
                done |= next_id.squeeze(1) == stop_token
                if bool(done.all()):
                    break
        return out[:, :t]

    @torch.inference_mode()   # as generate (it returns Python lists, so no inference tensor escapes)
    def beam_search(self, idx, max_new_tokens, beam_width=5, prefix_kv=None, stop_token=None,
                    length_penalty=1.0):
        """Beam search for one prompt idx (1, T); returns the new tokens (list, stop token included).

        Same cache as generate: it starts from the prefix, and each step keeps the cache rows of the
        beams that survive (a gather along the batch axis). A hypothesis ends at stop_token; the best
        finished one wins by  sum log p / length**length_penalty . Width 1 is greedy decoding.
        """
        if idx.size(0) != 1:
            raise ValueError("beam_search takes one prompt at a time: idx must be (1, T)")
        P = 0 if prefix_kv is None else self.check_prefix(prefix_kv)
        room = room_after(P, self.config.block_size) - idx.size(1)
        if room < 1:
            raise ValueError(f"prompt of {idx.size(1)} tokens plus prefix of {P} fills block_size "
                             f"{self.config.block_size}: no room to generate")
        max_new_tokens = min(max_new_tokens, room)
        alive = idx.new_empty(1, 0)                                    # (beams, generated so far)
        scores = torch.zeros(1, device=idx.device)                     # (beams,) sum of log-probs
        finished = []                                                  # (tokens, score)
        cache = KVCache(self.config, 1, P + idx.size(1) + max_new_tokens, prefix_kv if P else None)
        todo = idx
        for _ in range(max_new_tokens):
            logits, _, _ = self.step(todo, cache)                      # (beams, vocab)
            candidates = scores[:, None] + torch.log_softmax(logits.float(), dim=-1)
            V = candidates.size(1)
            top_scores, top_ids = candidates.view(-1).topk(min(2 * beam_width, candidates.numel()))
            keep_beam, keep_tok, keep_score = [], [], []
            for s, i in zip(top_scores.tolist(), top_ids.tolist()):
                beam, tok = divmod(i, V)
                if tok == stop_token:
                    finished.append((alive[beam].tolist() + [tok], s))
                else:
                    keep_beam.append(beam), keep_tok.append(tok), keep_score.append(s)
                if len(keep_beam) == beam_width:
                    break
            if len(finished) >= beam_width or not keep_beam:
                break
            rows = torch.tensor(keep_beam, device=idx.device)
            todo = torch.tensor(keep_tok, device=idx.device)[:, None]          # (beams, 1)
            alive = torch.cat([alive[rows], todo], dim=1)
            scores = torch.tensor(keep_score, device=idx.device)
            cache.reorder(rows)
        else:
            finished += [(alive[b].tolist(), scores[b].item()) for b in range(alive.size(0))]
        if not finished:  # every surviving beam was cut by the finish rule above; keep them
            finished = [(alive[b].tolist(), scores[b].item()) for b in range(alive.size(0))]
        return max(finished, key=lambda f: f[1] / max(len(f[0]), 1) ** length_penalty)[0]

    @classmethod
    def from_pretrained(cls, name_or_dir: str, cache_dir: str | None = None) -> "GPT":
        """GPT-2's weights: a name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), downloaded once into a
        cache, or a local folder in Hugging Face's layout (config.json + model.safetensors or
        pytorch_model.bin). Returns the model in eval mode; see gpt2.load_gpt2."""
        from gpt2 import load_gpt2  # here, not at the top: gpt2.py imports this module
        return load_gpt2(name_or_dir, cache_dir)


def sample_next(logits, temperature=1.0, top_k=None):
    """logits (B, vocab) → next token ids (B, 1). temperature 0 means greedy."""
    if not temperature >= 0:   # also catches NaN; a negative one would sample the inverted distribution
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for all tokens), got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
