"""
prefix.py — trainable prefixes for a frozen GPT: prefix tuning (Li & Liang 2021) and prompt tuning
(Lester et al. 2021), mixed-prefix batches, saving/loading a prefix alone, parameter accounting.

Prefix tuning solves  argmin_P  L(LM_θ(x; P), y)  with θ frozen: only P, a per-layer key/value
prefix of length n_prefix, is trained. Both modules here are called the same way,

    prefix_kv = prefix(model)          # n_layer pairs (key, value), each (1, n_head, n_prefix, head_dim)
    logits, loss = model(x, y, prefix_kv=prefix_kv)

and what they return is a plain `prefix_kv` that GPT.forward and GPT.generate take as it is.

    PrefixTuning : P is free in every layer (the "deep" prefix).
                   Optionally reparameterised: P = MLP(P'), MLP = Linear → tanh → Linear (the paper's
                   trick for stable training); `fold()` evaluates the MLP once and keeps only P.
    PromptTuning : P soft input embeddings E; the per-layer keys/values are what the frozen model
                   computes from E — a prefix constrained to be reachable from the input layer.
"""
import torch
import torch.nn as nn

from model import GPT, GPTConfig


def _check_model(config: GPTConfig, model: GPT | None):
    if model is not None:
        c = model.config
        if (c.n_layer, c.n_head, c.n_embd) != (config.n_layer, config.n_head, config.n_embd):
            raise ValueError(f"prefix built for n_layer={config.n_layer}, n_head={config.n_head}, "
                             f"n_embd={config.n_embd} cannot drive a model with n_layer={c.n_layer}, "
                             f"n_head={c.n_head}, n_embd={c.n_embd}")


class PrefixTuning(nn.Module):
    """A learned key/value prefix of n_prefix slots for every layer (Li & Liang's prefix tuning)."""

    def __init__(self, config: GPTConfig, n_prefix: int, reparam: bool = False, reparam_hidden: int = 512):
        super().__init__()
        if n_prefix < 1:
            raise ValueError(f"n_prefix must be at least 1, got {n_prefix}")
        self.config, self.n_prefix = config, n_prefix
        self.reparam, self.reparam_hidden = reparam, reparam_hidden
        L, nh, hd, C = config.n_layer, config.n_head, config.head_dim, config.n_embd
        if reparam:
            # P' (n_prefix, C) → MLP → all layers' K and V (n_prefix, L·2·C)
            self.prefix_input = nn.Parameter(torch.randn(n_prefix, C) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(C, reparam_hidden), nn.Tanh(),
                                     nn.Linear(reparam_hidden, L * 2 * C))
        else:
            # the prefix itself: (n_layer, 2 for key/value, n_head, n_prefix, head_dim)
            self.prefix = nn.Parameter(torch.randn(L, 2, nh, n_prefix, hd) * 0.02)

    def prefix_tensor(self) -> torch.Tensor:
        """All layers' keys and values as one tensor (n_layer, 2, n_head, n_prefix, head_dim)."""
        if not self.reparam:
            return self.prefix
        # BEGIN SOLUTION A2.1: P = MLP(P'), then lay each slot's L·2·C numbers out as (L, 2, nh, P, hd)
        c = self.config
        flat = self.mlp(self.prefix_input)                                   # (P, L·2·C)
        kv = flat.view(self.n_prefix, c.n_layer, 2, c.n_head, c.head_dim)   # (P, L, 2, nh, hd)
        return kv.permute(1, 2, 3, 0, 4)                                     # (L, 2, nh, P, hd)
        # END SOLUTION

    def forward(self, model: GPT | None = None) -> list:
        _check_model(self.config, model)
        kv = self.prefix_tensor()
        return [(kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0)) for i in range(self.config.n_layer)]

    @torch.no_grad()
    def fold(self) -> "PrefixTuning":
        """After training, keep only P = MLP(P') as plain tensors (the paper drops the MLP). A prefix
        without reparameterisation is already folded: itself."""
        if not self.reparam:
            return self
        # BEGIN SOLUTION A2.2: evaluate the MLP once into a new plain (reparam=False) prefix on the same device
        folded = PrefixTuning(self.config, self.n_prefix, reparam=False).to(self.prefix_input.device)
        folded.prefix.copy_(self.prefix_tensor())
        return folded
        # END SOLUTION

    @torch.no_grad()
    def init_from_kv(self, prefix_kv, fit_steps: int = 300):
        """Start from given keys/values, e.g. model.key_values(tokens of a real text) — Li & Liang found
        this helps when data is scarce. A reparameterised prefix is fitted to them by regression."""
        target = torch.stack([torch.stack([k[0], v[0]]) for k, v in prefix_kv])  # (L, 2, nh, P, hd)
        if target.shape != (self.config.n_layer, 2, self.config.n_head, self.n_prefix, self.config.head_dim):
            raise ValueError(f"init keys/values of shape {tuple(target.shape)} do not fit this prefix "
                             f"(n_prefix={self.n_prefix})")
        if not self.reparam:
            self.prefix.copy_(target)
            return self
        with torch.enable_grad():
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
            for _ in range(fit_steps):
                loss = (self.prefix_tensor() - target).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self


class PromptTuning(nn.Module):
    """n_prefix soft token embeddings placed before the input (Lester et al.'s prompt tuning).

    Its prefix_kv is computed by the frozen model from the embeddings (model.key_values), so the keys
    and values of every layer are tied together through the model — unlike PrefixTuning's free ones.
    """

    def __init__(self, config: GPTConfig, n_prefix: int):
        super().__init__()
        if n_prefix < 1:
            raise ValueError(f"n_prefix must be at least 1, got {n_prefix}")
        self.config, self.n_prefix = config, n_prefix
        self.soft_embeds = nn.Parameter(torch.randn(n_prefix, config.n_embd) * 0.02)   # (P, C)

    def forward(self, model: GPT) -> list:
        _check_model(self.config, model)
        # BEGIN SOLUTION A3.1: the frozen model's own keys/values for the soft embeddings, a batch of one
        return model.key_values(embeds=self.soft_embeds.unsqueeze(0))                    # each (1, nh, P, hd)
        # END SOLUTION

    def fold(self) -> "PromptTuning":
        """Nothing to fold: the soft embeddings are what is saved (so every prefix module has fold())."""
        return self

    @torch.no_grad()
    def init_from_tokens(self, model: GPT, token_ids):
        """Start from the embeddings of real tokens (Lester et al.'s vocabulary init)."""
        # BEGIN SOLUTION A3.2: copy the tokens' own input embeddings (wte) into soft_embeds; refuse a count other than P
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.soft_embeds.device)
        if ids.numel() != self.n_prefix:
            raise ValueError(f"{ids.numel()} init tokens for a prompt of n_prefix={self.n_prefix}")
        self.soft_embeds.copy_(model.transformer.wte(ids))
        return self
        # END SOLUTION


PREFIX_METHODS = ("prefix", "prefix-reparam", "prompt")


def build_prefix(method: str, config: GPTConfig, n_prefix: int, reparam_hidden: int = 512):
    """method: 'prefix' | 'prefix-reparam' | 'prompt'."""
    if method == "prefix":
        return PrefixTuning(config, n_prefix)
    if method == "prefix-reparam":
        return PrefixTuning(config, n_prefix, reparam=True, reparam_hidden=reparam_hidden)
    if method == "prompt":
        return PromptTuning(config, n_prefix)
    raise ValueError(f"unknown prefix method {method!r}: use 'prefix', 'prefix-reparam' or 'prompt'")


def method_of(prefix: nn.Module) -> str:
    if isinstance(prefix, PromptTuning):
        return "prompt"
    return "prefix-reparam" if prefix.reparam else "prefix"



def init_text_tokens(tokenizer, text: str, n_prefix: int) -> list[int]:
    """Exactly n_prefix token ids from `text`: cut, or repeated cyclically when too short."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the prefix init text is empty")
    return [ids[i % len(ids)] for i in range(n_prefix)]


# ----------------------------------------------------------------------------------------------
# Mixed-prefix batches: each row its own prefix, of its own length.

def batch_prefixes(prefix_kvs: list, rows: list[int] | None = None):
    """Stack prefixes of different lengths into one padded prefix_kv and a prefix_mask.

    prefix_kvs : list of N prefix_kv (each n_layer pairs of (1, nh, P_i, hd)); an entry may be None
                 for "no prefix".
    rows       : for every batch row, the index of its prefix (default: row i uses prefix i).
    returns    : prefix_kv with each key/value (B, nh, P_max, hd), padded at the end with zeros,
                 and prefix_mask (B, P_max) bool. Padded slots are masked out of attention and
                 positions count only real slots, so each row computes what it would alone.
    """
    rows = list(range(len(prefix_kvs))) if rows is None else rows
    real = [p for p in prefix_kvs if p is not None]
    if not real:
        raise ValueError("batch_prefixes needs at least one prefix")
    n_layer = len(real[0])
    _, nh, _, hd = real[0][0][0].shape
    ref = real[0][0][0]
    # BEGIN SOLUTION A4.1: zero-padded (B, nh, P_max, hd) keys/values per layer; mask True on each row's real slots
    lengths = [0 if p is None else p[0][0].size(2) for p in prefix_kvs]
    P_max = max(lengths)
    B = len(rows)
    mask = torch.zeros(B, P_max, dtype=torch.bool, device=ref.device)
    out = [(ref.new_zeros(B, nh, P_max, hd), ref.new_zeros(B, nh, P_max, hd)) for _ in range(n_layer)]
    for b, i in enumerate(rows):
        if prefix_kvs[i] is None:
            continue
        n = lengths[i]
        mask[b, :n] = True
        for layer, (k, v) in enumerate(prefix_kvs[i]):
            out[layer][0][b, :, :n] = k[0]
            out[layer][1][b, :, :n] = v[0]
    return out, mask
    # END SOLUTION


# ----------------------------------------------------------------------------------------------

def count_parameters(model: nn.Module, prefix: nn.Module | None, n_base: int | None = None) -> dict:
    """Trainable vs frozen parameter counts; the percentage is trainable / base model size. n_base: the
    base's size before a method added parameters to the model (LoRA, adapters); default all of them."""
    trainable = 0 if prefix is None else sum(p.numel() for p in prefix.parameters() if p.requires_grad)
    trainable += sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    base = n_base or sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": frozen, "percent": 100.0 * trainable / max(base, 1)}


def freeze(model: nn.Module) -> nn.Module:
    """θ frozen: no base parameter takes a gradient."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model
