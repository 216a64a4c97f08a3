"""
analysis.py — looking inside a prefix: how much of each head's attention it takes, and which vocabulary
tokens a soft prompt lies near; and inside a frozen base: what a linear probe reads from each layer (what
any method that leaves the base frozen has to work with). The course's questions (ASSIGNMENTS.md) are
answered with these.

    layers = attention_maps(model, idx, prefix_kv)    # per layer: the weights with the prefix, and without it
    mass = prefix_mass(model, idx, prefix_kv)         # (n_layer, n_head), each in [0, 1]
    plot_mass(mass, "mass.png", "E2E prefix")         # a layer × head heatmap
    ids, sims = nearest_tokens(prompt.soft_embeds, model.transformer.wte.weight, k=3)
    feats = layer_features(model, idx)                # (n_layer + 2, 2, C): last position, mean over positions
    accuracy = linear_probe(x_train, y_train, x_test, y_test)

What a prefix can and cannot do to one attention layer (Petrov, Torr & Bibi, ICLR 2024): its keys join
the tokens' keys in one softmax, so for a query with prefix mass m the weights over the input's own tokens
are (1 − m) times the weights that query would give them with no prefix. The prefix scales the pattern
among the input's tokens and adds its own values on top; it cannot reorder that pattern.
`attention_maps` returns both sides of that identity, computed from the same queries and keys.

This module reads the model's own attention (model.attention_weights, CausalSelfAttention.heads); it knows
nothing about files, data or command lines.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import GPT, CausalSelfAttention, attention_weights, prefix_length, room_after


@dataclass
class LayerAttention:
    """One layer's attention for a batch: with the prefix (B, nh, T, P+T), prefix slots first, and from the
    same queries and token keys with no prefix at all (B, nh, T, T)."""
    with_prefix: torch.Tensor
    without_prefix: torch.Tensor
    n_prefix: int                # P: the prefix's slots in with_prefix (padded ones included)

    @property
    def prefix_mass(self) -> torch.Tensor:
        """(B, nh, T): the share of each query's attention that goes to the prefix."""
        return self.with_prefix[..., :self.n_prefix].sum(-1)


@torch.no_grad()
def attention_maps(model: GPT, idx, prefix_kv=None, prefix_mask=None) -> list[LayerAttention]:
    """Run idx (B, T) after a prefix and return every layer's attention weights (see LayerAttention).

    Each layer's queries and keys are read where the model computes them (a hook on its attention), so
    they are the ones its forward pass used; the weights come from model.attention_weights, the equation
    the reference path runs."""
    captured = []

    def read(module, args, _output):
        x, prefix_k, mask = args[0], args[1], args[3]                     # forward(x, prefix_k, prefix_v, mask, ...)
        q, k, _ = module.heads(x)                                          # each (B, nh, T, hd)
        n_prefix = 0 if prefix_k is None else prefix_k.size(2)
        captured.append(LayerAttention(attention_weights(q, k, prefix_k, mask), attention_weights(q, k),
                                       n_prefix))

    hooks = []
    for i, block in enumerate(model.transformer.h):
        if not isinstance(block.attn, CausalSelfAttention):
            raise ValueError(f"block {i}'s attention is wrapped ({type(block.attn).__name__}): analyse a plain base")
        hooks.append(block.attn.register_forward_hook(read))
    try:
        model(idx, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
    finally:
        for h in hooks:
            h.remove()
    return captured


def prefix_mass(model: GPT, idx, prefix_kv, prefix_mask=None) -> torch.Tensor:
    """(n_layer, n_head): the share of attention the prefix takes, averaged over the batch's queries."""
    return torch.stack([layer.prefix_mass.mean(dim=(0, 2)) for layer in attention_maps(model, idx, prefix_kv,
                                                                                      prefix_mask)])


def average_prefix_mass(model: GPT, inputs: list[list[int]], prefix_kv) -> torch.Tensor:
    """(n_layer, n_head): prefix_mass of each input run alone (cut to the room the prefix leaves), averaged
    over the inputs, so a long input counts as much as a short one."""
    if not inputs:
        raise ValueError("no input to measure the prefix's attention on")
    room = room_after(prefix_length(prefix_kv), model.config.block_size)
    device = next(model.parameters()).device
    masses = []
    for ids in inputs:
        if not ids:
            raise ValueError("an input is empty: every input needs at least one token")
        masses.append(prefix_mass(model, torch.tensor([ids[:room]], device=device), prefix_kv))
    return torch.stack(masses).mean(0)


def plot_mass(mass: torch.Tensor, png_path: str, title: str):
    """A layer × head heatmap of prefix mass on a fixed 0..1 scale (so two plots compare by eye), each cell
    labelled with its value; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from data.files import atomic_write
    m = mass.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * m.shape[1], 1.0 + 0.5 * m.shape[0]))
    image = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for layer in range(m.shape[0]):
        for head in range(m.shape[1]):
            ax.text(head, layer, f"{m[layer, head]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if m[layer, head] > 0.5 else "white")   # readable on viridis' dark and light ends
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="attention on the prefix")
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def nearest_tokens(embeds: torch.Tensor, table: torch.Tensor, k: int = 1):
    """For each soft embedding (P, C), the k vocabulary rows of table (V, C) with the highest cosine
    similarity, as Lester et al. read their prompts. Returns (ids (P, k), similarities (P, k)), best first.

    This readout is not what the prompt does (Khashabi et al., Prompt Waywardness, NAACL 2022);
    ASSIGNMENTS.md (A3) has a test that shows it.
    # BEGIN ANSWER A3.Q2 (a student copy leaves these lines out: course/ANSWERS.md)
    Why: the model reads the vectors, never the tokens, and a prompt can sit near tokens that mean one
    thing while steering the model to another.
    # END ANSWER
    """
    if k < 1 or k > table.size(0):
        raise ValueError(f"k must be between 1 and the vocabulary size {table.size(0)}, got {k}")
    # BEGIN SOLUTION A3.3: cosine similarity of every soft embedding to every row of the table; top k per slot
    sims = F.normalize(embeds, dim=-1) @ F.normalize(table, dim=-1).T           # (P, V)
    top = sims.topk(k, dim=-1)
    return top.indices, top.values
    # END SOLUTION


# -- what a frozen base already computes ------------------------------------------------------------

@torch.no_grad()
def layer_features(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """What each layer holds about one sequence, for probing. idx (1, T) → (n_layer + 2, 2, C): for the
    embeddings (token + position), each block's output and the final LayerNorm's, the vector at the last
    position (where the next token, e.g. a label, is predicted) and the mean over all positions."""
    # read where the model's own trunk computes them (hooks, as attention_maps does), not recomputed here
    states = []

    def read(_module, _args, output):
        states.append(output[0] if isinstance(output, tuple) else output)               # (1, T, C)
    hooks = [m.register_forward_hook(read) for m in (model.transformer.drop, *model.transformer.h)]
    try:
        final, _ = model.trunk(model.transformer.wte(idx))                              # after ln_f: (1, T, C)
    finally:
        for hook in hooks:
            hook.remove()
    h = torch.cat(states + [final])                                                 # (n_layer + 2, T, C)
    return torch.stack([h[:, -1], h.mean(dim=1)], dim=1)                            # (n_layer + 2, 2, C)


def linear_probe(x_train, y_train, x_test, y_test, weight_decay: float = 1e-3, iters: int = 200) -> float:
    """Test accuracy of a logistic regression fitted on frozen features: x (N, D) floats, y (N,) class ids.
    Features are standardised with the training set's mean and std; the weights W (D, K) and bias b (K,)
    minimise cross_entropy(x W + b, y) + weight_decay · ‖W‖² by L-BFGS (a convex problem: no learning rate
    to tune, and the same answer from every start)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std                              # (N, D), (M, D)
    k = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(a.size(1), k, requires_grad=True)                                # (D, K)
    bias = torch.zeros(k, requires_grad=True)                                         # (K,)
    opt = torch.optim.LBFGS([w, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y_train) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return ((b @ w + bias).argmax(dim=1) == y_test).float().mean().item()
