"""
model.py — a minimal GPT whose attention blocks take prefix keys and values natively.

A *prefix* (Li & Liang 2021) is, for every layer, P keys and P values that sit in front of the keys and
values the T current tokens make. Each query attends over both:

    attention with a prefix:   softmax(Q·[P_k; K]ᵀ/√d + M)·[P_v; V]

                  keys:   P_1 … P_P │ x_1 x_2 … x_T
        query x_1         ■  …  ■   │  ■  ·  …  ·        ■ may attend   · masked (M = -inf)
        query x_2         ■  …  ■   │  ■  ■  …  ·        every query sees every prefix slot,
        …                           │                    and the tokens causally
        query x_T         ■  …  ■   │  ■  ■  …  ■

A trained prefix is a past that was learned; a KV cache is a past that was computed. So the same code
serves both: this file takes the learned one (`prefix_kv`), and prefixgpt/decoding.py passes a cache in
through the same blocks (the `cache` argument of GPT.trunk) — this file never imports it.

Shapes used throughout (B batch, T tokens, P prefix slots, C = n_embd, nh = n_head, hd = head_dim = C/nh):
    prefix_kv   : all layers' prefix, a sequence of n_layer pairs (key, value), each (B or 1, nh, P, hd)
    prefix_mask : optional (B, P) bool, True where a slot is real; used to batch prefixes of
                  different lengths (shorter ones padded at the end). Row b's tokens sit at
                  positions n_b .. n_b+T-1 (n_b its real slots), as if that row ran alone.

Module names follow GPT-2 (transformer.wte, wpe, h[i].ln_1, attn.c_attn, ...), so a GPT-2 checkpoint's
tensors keep their names here; prefixgpt/gpt2.py loads them (GPT-2's Conv1D weights are transposed,
and GPT-2 needs gelu="tanh"). This module knows the model and nothing else: no files, devices,
tokenizers, caches or training. It imports only torch and the standard library.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (key, value), each (B or 1, nh, L, hd)


def _allowed(default, **rules):
    """A field with the values it allows beside it (prefixgpt/cli.py checks them where settings are parsed)."""
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


# ----------------------------------------------------------------------------------------------
# Where the tokens sit after a prefix.

def prefix_length(prefix_kv, prefix_mask=None) -> int:
    """How many positions a prefix takes: P, or with a mask (mixed lengths) the longest row's real slots;
    0 for None. With a mask this reads the mask's values (a GPU sync): callers compute it once per batch."""
    if prefix_kv is None:
        return 0
    if prefix_mask is None:
        return prefix_kv[0][0].size(2)
    return int(prefix_mask.sum(1).max()) if prefix_mask.numel() else 0


def room_after(n_past: int, block_size: int) -> int:
    """Positions left for tokens once n_past positions (a prefix, a cache) are in the context."""
    return block_size - n_past


def token_positions(T: int, n_past: int, prefix_mask, device) -> torch.Tensor:
    """Positions of T tokens that follow a prefix: (1, T), or (B, T) with a mask (mixed lengths).

    The prefix occupies positions 0..n-1 and the tokens n..n+T-1, where n counts a row's *real* slots
    (padding slots take no position), so every row is numbered as it would be alone."""
    if n_past == 0 and prefix_mask is None:   # the plain model (P = 0 is exactly it)
        return torch.arange(T, device=device)[None]
    # BEGIN SOLUTION A1.3: tokens start after the row's real prefix slots: (1, T), or (B, T) with a mask
    if prefix_mask is None:
        return torch.arange(n_past, n_past + T, device=device)[None]                       # (1, T)
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
    Shared by the reference path and by prefixgpt/analysis.py, which reads how much of it the prefix takes.
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

    # BEGIN ANSWER A1.Q1 (a student copy leaves these lines out: course/ANSWERS.md)
    `is_causal=True` aligns the causal triangle to the *top-left*, which is wrong once keys outnumber
    queries (query 0 must see all P past slots, not just key 0).
    # END ANSWER
    The mask it takes:
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
        # imported here, not at the top: the module pulls in torch._dynamo, which every script's start-up
        # would pay for, and only a prefix (or cache) with several new tokens needs it
        from torch.nn.attention.bias import causal_lower_right
        mask = causal_lower_right(T, P + T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# ----------------------------------------------------------------------------------------------
# The blocks. GPT-2's layout: pre-LayerNorm, attention then MLP, each added to the residual stream.

class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        config.validate()
        self.layer_idx = layer_idx   # which layer of a cache this block writes to
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

    def forward(self, x, prefix_k, prefix_v, prefix_mask, fast: bool, cache=None):
        """x (B, T, C), this layer's prefix_k/prefix_v (B or 1, nh, P, hd) or None
        → (y (B, T, C), (k, v) of these T tokens, each (B, nh, T, hd)).

        cache: an object with append(layer, k, v) → [past; new] keys and values (decoding.KVCache). With
        one, these tokens' keys/values are stored after the past it holds, and attention reads the past
        from it instead of from prefix_k/prefix_v (the cache began as a copy of the prefix)."""
        B, T, C = x.shape
        q, k, v = self.heads(x)
        present = (k, v)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v)                           # (B, nh, n+T, hd)
            prefix_k = prefix_v = None
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

    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, prefix_k, prefix_v, prefix_mask, fast, cache=None):
        a, present = self.attn(self.ln_1(x), prefix_k, prefix_v, prefix_mask, fast, cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


# ----------------------------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.fast_attention = True  # False: the literal softmax(...) path; tests hold the two equal
        self.grad_checkpoint = False  # True: keep only each block's input for the backward (--grad_checkpoint)
        self.pad_head = None          # pad the head's product to a multiple of 64 rows: None = on a GPU
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
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

    def trunk(self, tok_emb, prefix_kv=None, prefix_mask=None, cache=None):
        """Run the blocks on input embeddings that follow an optional prefix.

        tok_emb (B, T, C) → (h (B, T, C) after ln_f, present: n_layer pairs (k, v) each (B, nh, T, hd)).
        cache: a KV cache (decoding.KVCache) instead of a prefix. It tells how many positions its past
        takes (n_real) and which of its slots are real (past_mask), each block appends these tokens' keys
        and values to it, and advance(T) counts them in once every layer has.
        """
        B, T, _ = tok_emb.shape
        if cache is not None:
            # the cache knows its mask and the longest row's length without reading the GPU
            prefix_kv, prefix_mask, n_past = None, cache.past_mask(), cache.n_real
        else:
            if prefix_kv is not None and self.check_prefix(prefix_kv, prefix_mask) == 0:
                prefix_kv, prefix_mask = None, None  # P = 0 is exactly the plain model
            n_past = prefix_length(prefix_kv, prefix_mask)
        if n_past + T > self.config.block_size:
            raise ValueError(f"prefix length {n_past} + sequence length {T} = {n_past + T} exceeds "
                             f"block_size {self.config.block_size}: shorten the input or the prefix")
        pos = token_positions(T, n_past, prefix_mask, tok_emb.device)                    # (1 or B, T)
        x = self.transformer.drop(tok_emb + self.transformer.wpe(pos))                  # (B, T, C)
        present = []
        recompute = self.grad_checkpoint and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.transformer.h):
            prefix_k, prefix_v = (None, None) if prefix_kv is None else prefix_kv[i]    # (B|1, nh, P, hd)
            if recompute:
                # activation checkpointing: the backward pass runs this block again from its input x
                # instead of reading the activations it saved; the prefix is an input like x, so its
                # gradient comes out of the rerun too (dropout replays the same masks)
                x, kv = checkpoint(block, x, prefix_k, prefix_v, prefix_mask, self.fast_attention,
                                   use_reentrant=False)
            else:
                x, kv = block(x, prefix_k, prefix_v, prefix_mask, self.fast_attention, cache)
            present.append(kv)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x), present

    def forward(self, idx, targets=None, prefix_kv=None, prefix_mask=None):
        """idx (B, T) token ids → (logits (B, T, vocab), loss or None). Targets of -1 are ignored.
        Prefix tuning's loss is this with a learned prefix_kv:  L(LM_θ(x; P), y)."""
        h, _ = self.trunk(self.transformer.wte(idx), prefix_kv, prefix_mask)
        padded = self.head_logits(h)                                                     # (B, T, V')
        logits = padded[..., :self.config.vocab_size]                                    # (B, T, vocab), a view
        loss = None
        if targets is not None:   # columns past the vocabulary are -inf: softmax gives them 0, and no gradient
            loss = F.cross_entropy(padded.reshape(-1, padded.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def head_logits(self, h):
        """h (B, T, C) → logits through the tied head, (B, T, V') with V' = vocab, or on a GPU vocab rounded
        up to a multiple of 64. Why: an odd number of rows (GPT-2's 50,257) sends the GPU's matrix multiply
        to a slow kernel; 50,304 rows do not. The extra rows are zeros that exist only inside this product
        (the weight and every file keep the real vocabulary), and their logits are set to -inf, so no loss,
        sample or score ever sees them. forward hands out the first vocab columns only."""
        W = self.lm_head.weight                                                          # (vocab, C)
        extra = -W.size(0) % 64
        if extra == 0 or not (W.is_cuda if self.pad_head is None else self.pad_head):
            return self.lm_head(h)
        padded = F.linear(h, F.pad(W, (0, 0, 0, extra)))                                 # (B, T, vocab + extra)
        return padded.index_fill_(-1, torch.arange(W.size(0), padded.size(-1), device=h.device), float("-inf"))

    def key_values(self, idx=None, prefix_kv=None, prefix_mask=None, embeds=None) -> list[KV]:
        """The per-layer (key, value) that tokens `idx` (or input embeddings `embeds`, (B, T, C)) produce
        after an optional prefix: each (B, n_head, T, head_dim). This is what a KV cache holds; it
        initialises a prefix from real words, and turns prompt-tuning embeddings into a prefix."""
        if embeds is None:
            embeds = self.transformer.wte(idx)
        _, present = self.trunk(embeds, prefix_kv, prefix_mask)
        return present

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, prefix_kv=None, prefix_mask=None,
                 stop_token=None):
        """Append up to max_new_tokens to idx (B, T); temperature 0 is greedy (argmax).

        The plain way: every step runs the visible tokens again on top of the prefix. Past block_size the
        context slides: only the last (block_size - P) tokens stay visible; the prefix always does.
        prefixgpt/decoding.py's generate returns the same tokens with a KV cache, one position a step.
        stop_token: stop once every row has produced it (rows keep decoding until then).
        """
        n_past = prefix_length(prefix_kv, prefix_mask)
        window = room_after(n_past, self.config.block_size)
        if window < 1:
            raise ValueError(f"prefix length {n_past} leaves no room in block_size {self.config.block_size}")
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            h, _ = self.trunk(self.transformer.wte(idx[:, -window:]), prefix_kv, prefix_mask)
            next_id = sample_next(self.lm_head(h[:, -1, :]), temperature, top_k)        # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if stop_token is not None:
                done |= next_id.squeeze(1) == stop_token
                if bool(done.all()):
                    break
        return idx


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
