"""peft_io.py: a prefix written here runs under PEFT with the same logits, and PEFT's adapters run here.

peft and transformers are the oracles (test-only dependencies). The base is a tiny random GPT-2, loaded
both by GPT.from_pretrained and by transformers from the same folder.
"""
import json
import os
import shutil
import warnings

import pytest
import torch
import transformers
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from prefix import PrefixTuning, PromptTuning
from prefixgpt.gpt2 import load_gpt2
from prefixgpt.gpt2 import read_safetensors, write_safetensors
from prefixgpt.peft_io import load_peft, save_peft
from test_gpt2 import VOCAB, gpt2_vocab_folder, tiny_hf_model

P = 4
# PEFT calls a transformers method that transformers 5.24 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder, this project's GPT) for a tiny random GPT-2; hf_base() gives fresh transformers copies."""
    folder = str(tmp_path_factory.mktemp("gpt2_base"))
    tiny_hf_model(seed=5).save_pretrained(folder)
    return folder, load_gpt2(folder)


def hf_base(folder):
    # a fresh copy each time: PEFT wraps and freezes the model it is given
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def tokens(n=2, T=9, seed=6):
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def peft_logits(peft_model, x, n_virtual=0):
    """PEFT's logits for the real tokens. Prompt tuning returns the virtual tokens' positions too."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # transformers' deprecation notes about cache argument names
        logits = peft_model(input_ids=x).logits
    return logits[:, n_virtual:]


def ours(model, prefix, x):
    with torch.no_grad():
        return model(x, prefix_kv=prefix(model))[0]


def random_prefix(method, config, seed=7):
    """A prefix far from zero (std 1), so that a wrong order of layers, keys or heads shows up."""
    torch.manual_seed(seed)
    if method == "prompt":
        prefix = PromptTuning(config, P)
    else:
        prefix = PrefixTuning(config, P, reparam=(method == "prefix-reparam"), reparam_hidden=16)
    with torch.no_grad():
        for p in prefix.parameters():
            p.normal_()
    return prefix


# -- this project → PEFT ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["prefix", "prefix-reparam", "prompt"])
def test_saved_prefix_gives_the_same_logits_under_peft(base, tmp_path, method):
    folder, model = base
    prefix = random_prefix(method, model.config)
    save_peft(prefix, str(tmp_path), base_model_name_or_path=folder)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = PeftModel.from_pretrained(hf_base(folder), str(tmp_path)).eval()
    x = tokens()
    expected = ours(model, prefix, x)
    with torch.no_grad():
        assert (expected - model(x)[0]).abs().max() > 0.1                  # the prefix matters
    got = peft_logits(peft_model, x, n_virtual=P if method == "prompt" else 0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_round_trip_through_the_peft_folder_is_exact(base, tmp_path):
    _, model = base
    for method in ("prefix", "prompt"):
        prefix = random_prefix(method, model.config)
        save_peft(prefix, str(tmp_path / method))
        back = load_peft(str(tmp_path / method), model)
        assert type(back) is type(prefix) and back.n_prefix == P
        for a, b in zip(prefix.parameters(), back.parameters()):
            assert torch.equal(a, b)


# -- PEFT → this project ---------------------------------------------------------------------------

def peft_made(folder, peft_config, seed=8):
    """A PEFT model with a freshly made adapter whose weights are randomised far from their init."""
    peft_model = get_peft_model(hf_base(folder), peft_config).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.normal_()
    return peft_model


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix_projection"])
def test_peft_prefix_tuning_adapter_loads_with_peft_logits(base, tmp_path, projection):
    folder, model = base
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P,
                                prefix_projection=projection, encoder_hidden_size=16)
    peft_model = peft_made(folder, config)
    peft_model.save_pretrained(str(tmp_path))
    prefix = load_peft(str(tmp_path), model)
    assert isinstance(prefix, PrefixTuning) and not prefix.reparam and prefix.n_prefix == P
    x = tokens()
    torch.testing.assert_close(ours(model, prefix, x), peft_logits(peft_model, x), atol=1e-4, rtol=0)


def test_peft_projection_mlp_weights_are_folded_on_load(base, tmp_path):
    """PEFT itself saves the MLP's output (test above); a file holding the MLP's own weights, as the
    prompt encoder's state dict has them, is folded here into the same prefix."""
    folder, model = base
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P,
                                prefix_projection=True, encoder_hidden_size=16)
    peft_model = peft_made(folder, config)
    peft_model.save_pretrained(str(tmp_path / "saved"))
    encoder = peft_model.prompt_encoder["default"].state_dict()
    assert sorted(encoder) == ["embedding.weight", "transform.0.bias", "transform.0.weight",
                               "transform.2.bias", "transform.2.weight"]
    (tmp_path / "mlp").mkdir()
    shutil.copy(tmp_path / "saved" / "adapter_config.json", tmp_path / "mlp")
    write_safetensors(str(tmp_path / "mlp" / "adapter_model.safetensors"),
                      {f"prompt_encoder.default.{k}": v for k, v in encoder.items()})
    prefix = load_peft(str(tmp_path / "mlp"), model)
    x = tokens()
    torch.testing.assert_close(ours(model, prefix, x), peft_logits(peft_model, x), atol=1e-4, rtol=0)


def test_peft_prompt_tuning_adapter_loads_with_peft_logits(base, tmp_path):
    folder, model = base
    peft_model = peft_made(folder, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P))
    peft_model.save_pretrained(str(tmp_path))
    prompt = load_peft(str(tmp_path), model)
    assert isinstance(prompt, PromptTuning) and prompt.n_prefix == P
    x = tokens()
    torch.testing.assert_close(ours(model, prompt, x), peft_logits(peft_model, x, n_virtual=P), atol=1e-4, rtol=0)


# -- folders that must not load ------------------------------------------------------------------

def edit_config(path, **changes):
    with open(path) as f:
        conf = json.load(f)
    conf.update(changes)
    with open(path, "w") as f:
        json.dump(conf, f)


def test_bad_adapter_folders_are_one_line_errors(base, tmp_path):
    folder, model = base
    good = tmp_path / "good"
    save_peft(random_prefix("prefix", model.config), str(good))

    def broken(name, change):
        d = tmp_path / name
        shutil.copytree(good, d)
        change(d)
        with pytest.raises(ValueError) as e:
            load_peft(str(d), model)
        msg = str(e.value)
        assert "\n" not in msg, msg
        return msg

    assert "no adapter_config.json" in broken("no-config", lambda d: os.remove(d / "adapter_config.json"))
    assert "neither adapter_model.safetensors" in broken(
        "no-weights", lambda d: os.remove(d / "adapter_model.safetensors"))
    assert "peft_type 'LORA'" in broken("lora", lambda d: edit_config(d / "adapter_config.json", peft_type="LORA"))
    assert "num_layers=3, but the model has 2" in broken(
        "layers", lambda d: edit_config(d / "adapter_config.json", num_layers=3))
    assert "not a decoder-only CAUSAL_LM adapter" in broken(  # a seq2seq adapter has two sets of virtual tokens
        "seq2seq", lambda d: edit_config(d / "adapter_config.json", task_type="SEQ_2_SEQ_LM",
                                         num_transformer_submodules=2))
    msg = broken("shape", lambda d: edit_config(d / "adapter_config.json", num_virtual_tokens=P + 1))
    assert "'prompt_embeddings' has shape (4, 128)" in msg and "(5, 128)" in msg

    def wrong_tensor(d):
        t = read_safetensors(str(d / "adapter_model.safetensors"))["prompt_embeddings"]
        write_safetensors(str(d / "adapter_model.safetensors"), {"embeddings": t})
    assert "neither prompt_embeddings nor PEFT's prefix MLP" in broken("renamed", wrong_tensor)


def test_a_peft_folder_is_a_prefix_in_the_commands(tmp_path):
    """evaluate.py and sample.py take a PEFT adapter folder wherever they take a prefix file (PEFT's own
    prefix tuning and prompt tuning), and score it as the module load_peft gives; a folder that is no
    adapter is one line."""
    import re
    from conftest import one_line_error, run
    from data.tasks import load_task
    from data.tokenizer import get_tokenizer
    from prefixgpt.scoring import task_loss
    folder = gpt2_vocab_folder(tmp_path / "gpt2")   # GPT-2's vocabulary: the commands encode text with its tokenizer
    model = load_gpt2(folder)
    peft_made(folder, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P)).save_pretrained(
        str(tmp_path / "peft_prefix"))
    get_peft_model(hf_base(folder), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P)
                   ).save_pretrained(str(tmp_path / "peft_prompt"))
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "name[Zizzi] ||", "completion": " Zizzi is a pub."}\n', encoding="utf-8")
    res = run("evaluate.py", "--mode=loss", f"--base={folder}", "--with_base",
              f"--prefix={tmp_path}/peft_prefix,{tmp_path}/peft_prompt", f"--data={data}")
    got = dict(re.findall(r"(no prefix|peft_prefix|peft_prompt)\s+loss ([0-9.]+)", res.stdout))
    assert set(got) == {"no prefix", "peft_prefix", "peft_prompt"}, res.stdout
    examples, _ = load_task(str(data), get_tokenizer("gpt2"), 64 - P)
    for name in ("peft_prefix", "peft_prompt"):      # what the command printed is the module's own loss
        want = task_loss(model, load_peft(str(tmp_path / name), model).eval(), examples)
        assert float(got[name]) == pytest.approx(want, abs=1e-4)
    assert got["peft_prefix"] != got["no prefix"]
    text = run("sample.py", f"--base={folder}", f"--prefix={tmp_path}/peft_prefix", "--prompt=name[Zizzi] ||",
               "--max_new_tokens=3", "--temperature=0").stdout
    assert "--- [peft_prefix] ---" in text, text
    (tmp_path / "empty").mkdir()
    one_line_error(run("evaluate.py", "--mode=loss", f"--base={folder}", f"--prefix={tmp_path}/empty",
                       f"--data={data}", check=False), "a folder without adapter_config.json")


def test_a_peft_folder_on_a_base_with_another_tokenizer_is_refused(base, tmp_path):
    from prefixgpt.checkpoint import load_prefix
    folder, model = base
    save_peft(random_prefix("prefix", model.config), str(tmp_path / "adapter"))
    prefix, meta = load_prefix(str(tmp_path / "adapter"), model, tokenizer="gpt2")
    assert meta["source"] == "peft" and meta["n_prefix"] == P
    with pytest.raises(ValueError, match="made for a GPT-2 base, but this base uses the 'gpt2_2048' tokenizer"):
        load_prefix(str(tmp_path / "adapter"), model, tokenizer="gpt2_2048")


@pytest.mark.parametrize("method", ["prefix", "prompt", "lora"])
def test_finetune_prefix_save_peft_writes_a_folder_peft_loads_with_the_same_logits(tmp_path, method):
    """finetune_prefix.py --save_peft=DIR on a GPT-2 folder: PeftModel.from_pretrained loads DIR on the same
    GPT-2 and gives the logits of the prefix.pt the run saved; a method with no prefix, a base that is not
    GPT-2, or a folder that holds files is refused in one line before anything trains."""
    from conftest import one_line_error, run
    from prefixgpt.checkpoint import load_delta, load_prefix
    folder = gpt2_vocab_folder(tmp_path / "gpt2")
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"name[{n}] ||", "completion": f" {n} is a pub."}) + "\n"
                            for n in ("Zizzi", "Aromi", "Bibimbap")), encoding="utf-8")
    common = [f"--base={folder}", f"--train_file={task}", f"--val_file={task}", "--n_prefix=3", "--batch_size=3",
              "--max_iters=3", "--eval_interval=3", "--device=cpu", f"--method={method}",
              "--learning_rate=0.03" if method == "lora" else "--learning_rate=0.3"]
    res = run("finetune_prefix.py", *common, f"--out_dir={tmp_path}/run", f"--save_peft={tmp_path}/peft")
    assert "wrote the PEFT adapter folder" in res.stdout
    model = load_gpt2(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(hf_base(folder), str(tmp_path / "peft")).eval()
    x = tokens()
    if method == "lora":                       # the run's delta.pt and the folder: one update
        tuned, _ = load_delta(f"{tmp_path}/run/delta.pt", model)
        with torch.no_grad():
            mine = tuned(x)[0]
    else:
        mine = ours(model, load_prefix(f"{tmp_path}/run/prefix.pt", model)[0].eval(), x)
    torch.testing.assert_close(mine, peft_logits(peft_model, x, 3 if method == "prompt" else 0), atol=1e-4, rtol=0)
    # and the folder is a delta or a prefix wherever a command takes one
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "name[Zizzi] ||", "completion": " Zizzi is a pub."}\n', encoding="utf-8")
    flag = "--delta" if method == "lora" else "--prefix"
    assert "loss" in run("evaluate.py", "--mode=loss", f"--base={folder}", f"{flag}={tmp_path}/peft", f"--data={data}").stdout
    one_line_error(run("finetune_prefix.py", *common[:-2], "--method=bitfit", f"--out_dir={tmp_path}/r2",
                       f"--save_peft={tmp_path}/p2", check=False), "has no PEFT layout here")
    one_line_error(run("finetune_prefix.py", *common, f"--out_dir={tmp_path}/r3", f"--save_peft={tmp_path}/peft",
                       check=False), "is not an empty folder")
    own = tmp_path / "own.pt"
    from model import GPT, GPTConfig
    from prefixgpt.checkpoint import save_checkpoint
    save_checkpoint(str(own), GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=1, n_head=2, n_embd=16)), "byte")
    one_line_error(run("finetune_prefix.py", f"--base={own}", *common[1:], f"--out_dir={tmp_path}/r4",
                       f"--save_peft={tmp_path}/p4", check=False), "a PEFT adapter runs on a Hugging Face GPT-2")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3" / "prefix.pt").exists()
    assert not (tmp_path / "r4" / "prefix.pt").exists() and not (tmp_path / "p4").exists()


# -- LoRA both ways -------------------------------------------------------------------------------------

def lora_peft_made(folder, targets, r=4, alpha=8, seed=9, rslora=False):
    from peft import LoraConfig
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, target_modules=targets,
                        fan_in_fan_out=True, lora_dropout=0.0, use_rslora=rslora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # PEFT notes that GPT-2's Conv1D needs fan_in_fan_out
        peft_model = get_peft_model(hf_base(folder), config).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(std=0.5)               # B is zero at init: a random B makes the update show
    return peft_model


@pytest.mark.parametrize("targets,rslora", [(["c_attn"], False), (["attn.c_attn", "mlp.c_fc"], True)])
def test_a_peft_lora_folder_loads_with_peft_logits_merged_and_not(base, tmp_path, targets, rslora):
    from prefixgpt.methods import merge_lora
    from prefixgpt.peft_io import load_peft_lora
    folder, _ = base
    peft_model = lora_peft_made(folder, targets, rslora=rslora)
    peft_model.save_pretrained(str(tmp_path))
    model, meta = load_peft_lora(str(tmp_path), load_gpt2(folder))
    assert meta["settings"]["lora_r"] == 4
    x = tokens()
    want = peft_logits(peft_model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], want, atol=1e-4, rtol=0)
        torch.testing.assert_close(merge_lora(model)(x)[0], want, atol=1e-4, rtol=0)


def test_our_lora_saved_as_peft_loads_in_peft_with_the_same_logits(base, tmp_path):
    from prefixgpt.methods import attach, merge_lora
    from prefixgpt.peft_io import save_peft_lora
    folder, _ = base
    model = attach("lora", load_gpt2(folder), 4, 8.0, ("attn.c_attn", "attn.c_proj"))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    save_peft_lora(model, str(tmp_path), 4, 8.0, ("attn.c_attn", "attn.c_proj"), base_model_name_or_path=folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(hf_base(folder), str(tmp_path)).eval()
    x = tokens()
    with torch.no_grad():
        ours_logits = model.eval()(x)[0]
    torch.testing.assert_close(peft_logits(peft_model, x), ours_logits, atol=1e-4, rtol=0)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, merge_lora(model)(x)[0], atol=1e-4, rtol=0)


def test_bad_lora_folders_are_one_line_errors(base, tmp_path):
    from prefixgpt.peft_io import load_peft_lora
    folder, _ = base
    lora_peft_made(folder, ["c_attn"]).save_pretrained(str(tmp_path / "good"))

    def broken(name, **changes):
        d = tmp_path / name
        shutil.copytree(tmp_path / "good", d)
        edit_config(d / "adapter_config.json", **changes)
        with pytest.raises(ValueError) as e:
            load_peft_lora(str(d), load_gpt2(folder))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "is a LoRA variant this project does not hold" in broken("dora", use_dora=True)
    assert "is not LORA" in broken("prefix", peft_type="PREFIX_TUNING")
    assert "must be a positive integer" in broken("r", r=0)
