"""
decoding.py — fast decoding: a KV cache that starts as the prefix, cached generation, beam search.

model.py's GPT.generate is the plain way: every new token runs the whole visible context again. Here the
keys and values of what was already read are kept, so each new token costs one position. A cache is the
prefix that keeps growing: it starts as a copy of prefix_kv, and the model's blocks append to it, through
the `cache` argument of GPT.trunk. The model never imports this module; this module passes the cache in.

    out = generate(model, idx, 40, temperature=0, prefix_kv=prefix(model))   # the same tokens as
    out = model.generate(idx, 40, temperature=0, prefix_kv=prefix(model))    # (tests/test_cache.py)

Shapes as in model.py (B batch, T new tokens, P prefix slots, nh heads, hd head size).
"""
import copy

import torch
import torch.nn as nn

from model import join_prefix, prefix_length, room_after, sample_next


def cast_for_inference(model, dtype: str):
    """A copy of model for decoding under autocast, whose Linear layers and output head hold their weights
    in dtype ("bfloat16", "float16"), cast once; "float32": the model itself.

    Why: autocast casts every fp32 weight to bf16 each time its layer runs, so a decoding step re-casts the
    whole model (at batch 1 on a GPU, about half of the step). It rounds a weight to the same bf16 numbers
    every time, so casting it once beforehand gives the same logits, bit for bit (tests/test_cache.py).
    LayerNorms and the embeddings stay in fp32, as autocast leaves them (the head, tied to the token
    embedding, gets its own cast copy). Decode with it; never train or save it."""
    if dtype == "float32":
        return model
    low = getattr(torch, dtype)
    inference = copy.deepcopy(model)
    head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
    head.weight = nn.Parameter(inference.transformer.wte.weight.detach().to(low), requires_grad=False)
    inference.lm_head = head                       # untied: the embedding lookup keeps the fp32 rows
    for module in inference.modules():
        if isinstance(module, nn.Linear):
            module.to(low)
    return inference.requires_grad_(False).eval()


class KVCache:
    """Every layer's keys and values in buffers of (B, nh, capacity, hd), allocated once, filled in place.

    Slots 0..P-1 hold the prefix (padded slots too; `mask` says which are real), copied in once. Each
    step writes its T new tokens' keys/values at slots n..n+T-1 and attention reads slots 0..n+T-1 as
    one view: [past; new] with nothing copied (growing a list of tensors by torch.cat would copy the
    whole past in every layer at every step).
    This class knows only buffers and lengths: generate decides what goes in and when it restarts.
    """

    def __init__(self, config, batch: int, capacity: int, prefix_kv=None, prefix_mask=None,
                 n_prefix_real: int | None = None):
        self.batch, self.capacity, self.n_layer = batch, capacity, config.n_layer
        self.prefix_kv = prefix_kv          # copied into a layer's buffers at that layer's first write
        self.n_prefix = 0 if prefix_kv is None else prefix_kv[0][0].size(2)    # P, padded slots included
        if self.n_prefix > capacity:
            raise ValueError(f"a cache of {capacity} slots cannot hold a prefix of {self.n_prefix}")
        # the longest row's real prefix slots (the caller's, if it read them already), a Python int so that
        # decoding never waits on the GPU for it
        self.n_prefix_real = prefix_length(prefix_kv, prefix_mask) if n_prefix_real is None else n_prefix_real
        self.n = self.n_prefix              # slots filled so far
        self.keys: list = [None] * config.n_layer     # each (B, nh, capacity, hd) once written
        self.values: list = [None] * config.n_layer
        self.mask = None                    # (B, capacity) bool: which filled slots are real; None = all
        if prefix_mask is not None:
            self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=prefix_mask.device)
            self.mask[:, :self.n_prefix] = prefix_mask

    @property
    def n_cached(self) -> int:
        """Tokens held after the prefix."""
        return self.n - self.n_prefix

    @property
    def n_real(self) -> int:
        """Positions the longest row has used: its real prefix slots plus the cached tokens."""
        return self.n_prefix_real + self.n_cached

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
                self.keys[layer][:, :, :self.n_prefix] = pk                     # broadcast over rows
                self.values[layer][:, :, :self.n_prefix] = pv
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
        self.n = self.n_prefix

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


def step(model, idx, cache: KVCache):
    """Encode tokens idx (B, T) after what the cache holds, appending them to it; returns the last
    position's logits (B, vocab)."""
    h, _ = model.trunk(model.transformer.wte(idx), cache=cache)                         # (B, T, C)
    return model.lm_head(h[:, -1, :])                                                    # (B, vocab)


def prompt_as_prefix(model, prefix_kv, ids: list[int]):
    """[prefix; prompt]: the keys/values of prompt tokens ids read after prefix_kv, joined in front of them
    as one prefix_kv of a batch of one (each (1, nh, P + len(ids), hd)). A read prompt is a computed
    prefix, so prompts of different lengths batch as prefixes of different lengths do (batch_prefixes)."""
    device = next(model.parameters()).device
    present = model.key_values(torch.tensor([ids], device=device), prefix_kv=prefix_kv)    # each (1, nh, T, hd)
    if prefix_kv is None:
        return present
    return [(join_prefix(pk, k), join_prefix(pv, v)) for (pk, pv), (k, v) in zip(prefix_kv, present)]


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, prefix_kv=None, prefix_mask=None,
             stop_token=None):
    """GPT.generate with a cache: the same tokens, each new one costing one position.

    The prompt idx (B, T) is encoded once on top of the prefix. Past block_size the context slides: only
    the last (block_size - P) tokens stay visible (the prefix always does). Sliding shifts every token's
    position, so cached keys go stale; from then on each step re-encodes the window on the prefix alone
    (as slow as no cache, but never wrong). stop_token: stop once every row has produced it.
    """
    if prefix_kv is not None and model.check_prefix(prefix_kv, prefix_mask) == 0:
        prefix_kv, prefix_mask = None, None
    n_past = prefix_length(prefix_kv, prefix_mask)          # one GPU read per call, not per token
    window = room_after(n_past, model.config.block_size)
    if window < 1:
        raise ValueError(f"prefix length {n_past} leaves no room in block_size {model.config.block_size}")
    # inference mode, not just no_grad: tensors skip autograd's bookkeeping (version counters). What it
    # makes are "inference tensors", which may not be changed in place later, so the caller gets a copy.
    with torch.inference_mode():
        B, t = idx.shape
        out = idx.new_empty(B, t + max_new_tokens)               # the tokens, filled in place
        out[:, :t] = idx
        P = 0 if prefix_kv is None else prefix_kv[0][0].size(2)
        cache = KVCache(model.config, B, P + min(window, t + max_new_tokens), prefix_kv, prefix_mask, n_past)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        todo = idx
        for _ in range(max_new_tokens):
            if cache.n_cached + todo.size(1) > window:
                cache.reset()                                     # (re-)encode the window on the prefix alone
                todo = out[:, t - window:t]
            next_id = sample_next(step(model, todo, cache), temperature, top_k)           # (B, 1)
            out[:, t:t + 1] = next_id
            t += 1
            todo = next_id
            if stop_token is not None:
                done |= next_id.squeeze(1) == stop_token
                if bool(done.all()):
                    break
        out = out[:, :t]
    return out.clone()


@torch.inference_mode()   # as generate (it returns Python lists, so no inference tensor escapes)
def beam_search(model, idx, max_new_tokens, beam_width=5, prefix_kv=None, stop_token=None, length_penalty=1.0):
    """Beam search for one prompt idx (1, T); returns the new tokens (list, stop token included).

    Same cache as generate: it starts from the prefix, and each step keeps the cache rows of the
    beams that survive (a gather along the batch axis). A hypothesis ends at stop_token; the best
    finished one wins by  sum log p / length**length_penalty . Width 1 is greedy decoding.
    """
    if idx.size(0) != 1:
        raise ValueError("beam_search takes one prompt at a time: idx must be (1, T)")
    P = 0 if prefix_kv is None else model.check_prefix(prefix_kv)
    room = room_after(P, model.config.block_size) - idx.size(1)
    if room < 1:
        raise ValueError(f"prompt of {idx.size(1)} tokens plus prefix of {P} fills block_size "
                         f"{model.config.block_size}: no room to generate")
    max_new_tokens = min(max_new_tokens, room)
    alive = idx.new_empty(1, 0)                                    # (beams, generated so far)
    scores = torch.zeros(1, device=idx.device)                     # (beams,) sum of log-probs
    finished = []                                                  # (tokens, score)
    cache = KVCache(model.config, 1, P + idx.size(1) + max_new_tokens, prefix_kv if P else None)
    todo = idx
    for _ in range(max_new_tokens):
        logits = step(model, todo, cache)                          # (beams, vocab)
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
