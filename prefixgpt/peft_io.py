"""
peft_io.py — prefixes in PEFT's folder format, both ways, so a prefix trained here runs under
Hugging Face PEFT on the same GPT-2, and a PEFT adapter runs here.

    save_peft(prefix, "out/e2e_peft", base_model_name_or_path="gpt2-medium")
    prefix = load_peft("out/e2e_peft", model)     # a PrefixTuning or PromptTuning module
    save_peft_lora(model, "out/e2e_lora_peft", r, alpha, targets)   # the LoRA attached to a model
    model, meta = load_peft_lora("out/e2e_lora_peft", model)          # attached, in place

A PEFT folder holds adapter_config.json and adapter_model.safetensors. Its one tensor,
`prompt_embeddings`, is
    prefix tuning : (P, 2·n_layer·n_embd), each virtual token's row laid out [layer][key|value][head][hd],
                    which is exactly the order of PrefixTuning's reparameterised output (P, L, 2, nh, hd);
    prompt tuning : (P, n_embd), the soft input embeddings.
Positions agree without any shift: PEFT hands GPT-2 the prefix as past_key_values, which puts it at
positions 0..P-1 and the real tokens at P..P+T-1, as GPT.trunk does.

PEFT's own projection MLP (prefix_projection=True) is an Embedding → Linear → tanh → Linear; when PEFT
saves it, it evaluates the MLP and saves the result, so such a folder loads like any other. A file
that holds the MLP itself (embedding.weight, transform.0/2.*) is folded here the same way: evaluated
once, and only the resulting prefix kept.

It knows nothing about training or tokenizers, and needs neither peft nor safetensors at run time.
"""
import os

import torch

from data.files import read_json, write_json
from model import GPT
from prefix import PrefixTuning, PromptTuning
from prefixgpt.gpt2 import read_safetensors, write_safetensors
from prefixgpt.methods import LORA_TARGETS, LoRALinear, attach
from prefixgpt.torchio import safe_torch_load

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"   # PEFT's older pickle format, read with weights_only


def save_peft(prefix: PrefixTuning | PromptTuning, directory: str, base_model_name_or_path: str = "gpt2"):
    """Write `prefix` as a PEFT adapter folder (PREFIX_TUNING or PROMPT_TUNING, for CAUSAL_LM).

    A reparameterised PrefixTuning is saved folded: its MLP is evaluated once, and PEFT gets the
    prefix itself (prefix_projection false), which is all inference needs.
    """
    c = prefix.config
    P = prefix.n_prefix
    config = {
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "num_virtual_tokens": P,
        "token_dim": c.n_embd,
        "num_transformer_submodules": 1,   # a decoder only: one set of virtual tokens
        "num_attention_heads": c.n_head,
        "num_layers": c.n_layer,
    }
    with torch.no_grad():
        if isinstance(prefix, PromptTuning):
            config.update(peft_type="PROMPT_TUNING", prompt_tuning_init="RANDOM",
                          prompt_tuning_init_text=None, tokenizer_name_or_path=None)
            embeddings = prefix.soft_embeds.detach().float()                             # (P, C)
        elif isinstance(prefix, PrefixTuning):
            config.update(peft_type="PREFIX_TUNING", prefix_projection=False, encoder_hidden_size=c.n_embd)
            kv = prefix.prefix_tensor().detach().float()                                 # (L, 2, nh, P, hd)
            embeddings = kv.permute(3, 0, 1, 2, 4).reshape(P, c.n_layer * 2 * c.n_embd)  # (P, L·2·C)
        else:
            raise ValueError(f"save_peft takes a PrefixTuning or PromptTuning, not {type(prefix).__name__}")
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, ADAPTER_WEIGHTS), {"prompt_embeddings": embeddings},
                      metadata={"format": "pt"})
    # the config last: a folder with a config is a complete adapter
    write_json(os.path.join(directory, ADAPTER_CONFIG), config)


def load_peft(directory: str, model: GPT) -> PrefixTuning | PromptTuning:
    """A PEFT prefix-tuning or prompt-tuning folder as this project's module, checked against `model`.
    Every problem is a one-line ValueError that says what is wrong."""
    config_path, conf = _read_config(directory)
    peft_type = conf.get("peft_type")
    if peft_type not in ("PREFIX_TUNING", "PROMPT_TUNING"):
        raise ValueError(f"{config_path}: peft_type {peft_type!r} is not one this project holds "
                         "(PREFIX_TUNING or PROMPT_TUNING)")
    if conf.get("num_transformer_submodules") not in (None, 1) or conf.get("task_type") not in (None, "CAUSAL_LM"):
        raise ValueError(f"{config_path}: task_type {conf.get('task_type')!r} with "
                         f"{conf.get('num_transformer_submodules')} submodules is not a decoder-only CAUSAL_LM adapter")
    c = model.config
    for key, have in (("num_layers", c.n_layer), ("num_attention_heads", c.n_head), ("token_dim", c.n_embd)):
        if conf.get(key) != have:
            raise ValueError(f"{config_path}: {key}={conf.get(key)}, but the model has {have}: "
                             "the adapter was made for another base model")
    P = conf.get("num_virtual_tokens")
    if not isinstance(P, int) or P < 1:
        raise ValueError(f"{config_path}: num_virtual_tokens must be a positive integer, got {P!r}")
    tensors, source = _read_adapter_weights(directory)

    if peft_type == "PROMPT_TUNING":
        prompt = PromptTuning(c, P)
        with torch.no_grad():
            prompt.soft_embeds.copy_(_tensor(tensors, "prompt_embeddings", (P, c.n_embd), source))
        return prompt

    L, nh, hd, C = c.n_layer, c.n_head, c.head_dim, c.n_embd
    if "prompt_embeddings" in tensors:
        flat = _tensor(tensors, "prompt_embeddings", (P, L * 2 * C), source)                # (P, L·2·C)
    else:
        flat = _fold_projection(tensors, P, L * 2 * C, C, source)
    prefix = PrefixTuning(c, P)
    with torch.no_grad():
        prefix.prefix.copy_(flat.view(P, L, 2, nh, hd).permute(1, 2, 3, 0, 4))           # (L, 2, nh, P, hd)
    return prefix


def _read_config(directory: str) -> tuple[str, dict]:
    """(the path of a PEFT folder's adapter_config.json, its contents); a folder without one is a ValueError."""
    config_path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(config_path):
        raise ValueError(f"{directory} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    return config_path, read_json(config_path)


def _read_adapter_weights(directory: str) -> tuple[dict[str, torch.Tensor], str]:
    st, pt = os.path.join(directory, ADAPTER_WEIGHTS), os.path.join(directory, ADAPTER_WEIGHTS_BIN)
    if os.path.isfile(st):
        return read_safetensors(st), st
    if os.path.isfile(pt):
        state = safe_torch_load(pt, "PEFT adapter weights")
        if not isinstance(state, dict):
            raise ValueError(f"{pt} is not a dict of tensors")
        return state, pt
    raise ValueError(f"{directory} has neither {ADAPTER_WEIGHTS} nor {ADAPTER_WEIGHTS_BIN}")


def _tensor(tensors, name, shape, source, suffix_ok=False):
    """tensors[name] as float32, checked to have `shape`. With suffix_ok, a key that ends in .name
    also matches (PEFT module paths such as prompt_encoder.default.transform.0.weight)."""
    keys = [k for k in tensors if k == name or (suffix_ok and k.endswith("." + name))]
    if len(keys) != 1:
        found = ", ".join(sorted(tensors)[:4])
        raise ValueError(f"{source} has {'no' if not keys else 'several'} {name!r} tensor (it holds {found})")
    t = tensors[keys[0]]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{source}: {keys[0]!r} has shape {tuple(t.shape)}, but the model and "
                         f"adapter_config.json need {tuple(shape)}")
    return t.float()


def _fold_projection(tensors, P, out_dim, C, source):
    """PEFT's prefix MLP, evaluated once: tanh(E·W0ᵀ + b0)·W2ᵀ + b2, with E (P, C). Returns (P, L·2·C)."""
    w0 = tensors.get(next((k for k in tensors if k.endswith("transform.0.weight")), ""), None)
    if w0 is None or w0.dim() != 2:
        raise ValueError(f"{source} has neither prompt_embeddings nor PEFT's prefix MLP (embedding.weight, "
                         "transform.0/2.weight and .bias)")
    H = w0.size(0)   # the MLP's hidden width (encoder_hidden_size)
    E = _tensor(tensors, "embedding.weight", (P, C), source, suffix_ok=True)
    W0 = _tensor(tensors, "transform.0.weight", (H, C), source, suffix_ok=True)
    b0 = _tensor(tensors, "transform.0.bias", (H,), source, suffix_ok=True)
    W2 = _tensor(tensors, "transform.2.weight", (out_dim, H), source, suffix_ok=True)
    b2 = _tensor(tensors, "transform.2.bias", (out_dim,), source, suffix_ok=True)
    with torch.no_grad():
        return torch.tanh(E @ W0.T + b0) @ W2.T + b2                                     # (P, L·2·C)


# ----------------------------------------------------------------------------------------------
# LoRA: PEFT's layout for GPT-2 is this project's, tensor for tensor. For every adapted module M (e.g.
# transformer.h.0.attn.c_attn), PEFT keeps lora_A.weight (r, in) and lora_B.weight (out, r) and adds
# (lora_alpha / r)·B·A·x to the output; GPT-2's Conv1D stores its own weight transposed (fan_in_fan_out),
# which changes W₀'s layout, not A's or B's. LoRALinear holds the same A and B with the same scaling.

LORA_KEY = "base_model.model.{}.lora_{}.weight"


def save_peft_lora(model: GPT, directory: str, r: int, alpha: float, targets, base_model_name_or_path: str = "gpt2"):
    """Write the LoRA updates attached to `model` (methods.attach("lora", ...)) as a PEFT LORA folder."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            tensors[LORA_KEY.format(name, "A")] = module.A.detach().float().cpu().contiguous()   # (r, in)
            tensors[LORA_KEY.format(name, "B")] = module.B.detach().float().cpu().contiguous()   # (out, r)
    if not tensors:
        raise ValueError("save_peft_lora: the model holds no LoRA update (train one with --method=lora)")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "revision": None, "inference_mode": True, "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": sorted(targets), "fan_in_fan_out": True, "bias": "none", "use_rslora": False,
              "use_dora": False, "modules_to_save": None, "layers_to_transform": None, "init_lora_weights": True}
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, ADAPTER_WEIGHTS), tensors, metadata={"format": "pt"})
    write_json(os.path.join(directory, ADAPTER_CONFIG), config)   # last: a folder with a config is complete


def load_peft_lora(directory: str, model: GPT) -> tuple[GPT, dict]:
    """A PEFT LORA folder attached to `model` (in place) as this project's LoRA, with its tensors. Returns
    (model, {"method": "lora", "settings": ...}). Every problem is a one-line ValueError."""
    config_path, conf = _read_config(directory)
    if conf.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type {conf.get('peft_type')!r} is not LORA")
    for key, ok in (("bias", (None, "none")), ("use_dora", (None, False)), ("modules_to_save", (None, [])),
                    ("layers_to_transform", (None,))):
        if conf.get(key) not in ok:
            raise ValueError(f"{config_path}: {key}={conf.get(key)!r} is a LoRA variant this project does not hold")
    r, alpha = conf.get("r"), conf.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{config_path}: r={r!r} and lora_alpha={alpha!r} must be a positive integer and a number")
    tensors, source = _read_adapter_weights(directory)
    n_layer, targets = model.config.n_layer, set()
    for key in tensors:
        name = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]      # transformer.h.3.attn.c_attn
        parts = name.split(".")
        target = ".".join(parts[3:])
        if parts[:2] != ["transformer", "h"] or target not in LORA_TARGETS:
            raise ValueError(f"{source}: {key} adapts a module this project's LoRA cannot ({', '.join(LORA_TARGETS)})")
        targets.add(target)
    expected = {LORA_KEY.format(f"transformer.h.{i}.{t}", ab) for i in range(n_layer) for t in targets for ab in "AB"}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[0]
        raise ValueError(f"{source}: {odd} is missing or extra: a LoRA here adapts every block alike")
    # rsLoRA scales by alpha/sqrt(r); LoRALinear by alpha/r: the same update with alpha·sqrt(r)
    scale_alpha = alpha * r ** 0.5 if conf.get("use_rslora") else alpha
    attach("lora", model, r, scale_alpha, tuple(sorted(targets)))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoRALinear):
                for ab in "AB":
                    want, got = getattr(module, ab), tensors[LORA_KEY.format(name, ab)]
                    if tuple(got.shape) != tuple(want.shape):
                        raise ValueError(f"{source}: {LORA_KEY.format(name, ab)} has shape {tuple(got.shape)}, "
                                         f"the model needs {tuple(want.shape)}: another base model")
                    want.copy_(got)
    settings = {"lora_r": r, "lora_alpha": scale_alpha, "lora_targets": sorted(targets)}
    return model.eval(), {"method": "lora", "settings": settings, "source": "peft"}
