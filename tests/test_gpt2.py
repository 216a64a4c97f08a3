"""gpt2.py: GPT-2 folders and downloads load into GPT with transformers' logits; safetensors both ways.

transformers and the safetensors package are the independent oracles here (test-only dependencies).
Nothing is downloaded: the "hub" is an http.server on 127.0.0.1 serving a tiny random GPT-2.
"""
import functools
import http.server
import json
import math
import os
import shutil
import struct
import threading
from contextlib import contextmanager

import pytest
import safetensors.torch
import torch
import transformers
from safetensors import safe_open

from finetune_prefix import FinetuneConfig
from prefixgpt.cli import parse
from prefixgpt.decoding import generate
from prefixgpt.gpt2 import is_gpt2_base, is_gpt2_name, load_gpt2, read_safetensors, write_safetensors

VOCAB = 101


def tiny_hf_model(seed=0, scale=8.0):
    """A random GPT2LMHeadModel small enough for milliseconds. Its matrices are scaled up: at GPT-2's
    init (std 0.02) every logit is nearly equal, so greedy decoding would turn on rounding noise."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=VOCAB,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def gpt2_vocab_folder(folder, n_positions=64, seed=0) -> str:
    """A tiny random GPT-2 with GPT-2's whole vocabulary, written to folder: for the commands, which encode
    real text with GPT-2's tokenizer (tiny_hf_model's 101 tokens would not hold its ids)."""
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=n_positions,
                                                         vocab_size=50257)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """(folder written by save_pretrained, the transformers model)."""
    model = tiny_hf_model()
    folder = str(tmp_path_factory.mktemp("gpt2_tiny"))
    model.save_pretrained(folder)
    return folder, model


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# -- loading a folder ----------------------------------------------------------------------------

def test_folder_loads_with_transformers_logits_and_tied_head(hf_folder):
    folder, hf = hf_folder
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))      # the layout under test
    model = load_gpt2(folder)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 2, 32, 64, VOCAB)
    assert c.gelu == "tanh" and c.bias and not model.training
    assert model.lm_head.weight is model.transformer.wte.weight          # tied, one Parameter
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())
    x = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert ours.abs().max() > 1.0                                        # not a near-constant output
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_prefix_kv_equals_transformers_past_key_values(hf_folder):
    folder, hf = hf_folder
    model = load_gpt2(folder)
    g = torch.Generator().manual_seed(2)
    P, B = 5, 2
    prefix_kv = [(torch.randn(1, 2, P, 16, generator=g), torch.randn(1, 2, P, 16, generator=g))
                 for _ in range(2)]
    x = torch.randint(0, VOCAB, (B, 12), generator=g)
    with torch.no_grad():
        ours, _ = model(x, prefix_kv=prefix_kv)
        # a fresh cache per call: transformers appends the new tokens to it in place. (`cache` is what
        # transformers 5.24 calls past_key_values, the name it deprecates.)
        cache = transformers.DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix_kv])
        theirs = hf(x, cache=cache).logits
        plain, _ = model(x)
    assert (ours - plain).abs().max() > 0.1                              # the prefix does change them
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_greedy_generation_gives_transformers_tokens(hf_folder):
    folder, hf = hf_folder
    model = load_gpt2(folder)
    x = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    ours = generate(model, x, 20, temperature=0)
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(ours, theirs)
    assert len(set(ours[0, 6:].tolist())) > 2                            # not one token repeated


def test_greedy_generation_after_a_prefix_gives_transformers_tokens(hf_folder):
    """The prefix as the cache generation starts from, on both sides. (PEFT's own generate is not the
    oracle here: peft 0.21.2 looks for `past_key_values` among generate's arguments, which
    transformers 5.24 renamed `cache`, so it re-inserts the prefix at every step.)"""
    folder, hf = hf_folder
    model = load_gpt2(folder)
    g = torch.Generator().manual_seed(4)
    P = 3
    prefix_kv = [(torch.randn(1, 2, P, 16, generator=g), torch.randn(1, 2, P, 16, generator=g))
                 for _ in range(2)]
    x = torch.randint(0, VOCAB, (1, 6), generator=g)
    ours = generate(model, x, 20, temperature=0, prefix_kv=prefix_kv)
    cache = transformers.DynamicCache([(k.clone(), v.clone()) for k, v in prefix_kv])
    theirs = hf.generate(x, cache=cache, attention_mask=torch.ones(1, P + 6, dtype=torch.long),
                         max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, generate(model, x, 20, temperature=0))   # the prefix steers it


def test_pytorch_model_bin_folder_loads(hf_folder, tmp_path):
    """The older layout: a pickled state dict. transformers 5 no longer writes it (save_pretrained's
    safe_serialization=False is ignored), so the test writes it the way transformers 4 did."""
    folder, hf = hf_folder
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    model = load_gpt2(str(tmp_path))
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-5, rtol=0)


def test_hub_style_keys_and_buffers_load(hf_folder, tmp_path):
    """The hub's gpt2 files name tensors without "transformer." and carry the attention-mask buffers
    and, in some, lm_head.weight: all of that is accepted."""
    folder, hf = hf_folder
    state = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
    hub = {k.removeprefix("transformer."): v for k, v in state.items()}
    for i in range(2):
        hub[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    hub["lm_head.weight"] = hub["wte.weight"].clone()
    safetensors.torch.save_file(hub, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    model = load_gpt2(str(tmp_path))
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-5, rtol=0)


# -- folders that must not load ------------------------------------------------------------------

def bad_folder(src, dst, edit_state=None, edit_config=None):
    state = safetensors.torch.load_file(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(config)
    safetensors.torch.save_file(state, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)


@pytest.mark.parametrize("edit_state, edit_config, expected", [
    (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), None, "lacks tensor 'h.1.mlp.c_fc.bias'"),
    (lambda s: s.update({"transformer.h.0.attn.rotary.inv_freq": torch.ones(8)}), None,
     "unexpected tensor 'transformer.h.0.attn.rotary.inv_freq'"),
    (lambda s: s.update({"transformer.h.0.mlp.c_fc.weight": torch.zeros(32, 120)}), None,
     r"'transformer.h.0.mlp.c_fc.weight' has shape \(32, 120\), but config.json implies \(32, 128\)"),
    (lambda s: s.update({"lm_head.weight": torch.zeros(VOCAB, 32)}), None, "lm_head.weight differs"),
    (None, lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]),
     "describes a 'llama' model \\(LlamaForCausalLM\\), not GPT-2"),
    (None, lambda c: c.update(n_layer=3), "lacks tensor 'h.2.ln_1.weight'"),
    (None, lambda c: c.update(activation_function="relu"), "activation_function 'relu'"),
], ids=["missing", "extra", "misshaped", "untied-head", "llama", "more-layers", "activation"])
def test_bad_folder_is_a_one_line_error_naming_it(hf_folder, tmp_path, edit_state, edit_config, expected):
    folder = bad_folder(hf_folder[0], tmp_path, edit_state, edit_config)
    with pytest.raises(ValueError, match=expected) as e:
        load_gpt2(folder)
    one_line_error(e)


def test_truncated_weights_file_is_a_one_line_error_naming_it(hf_folder, tmp_path):
    folder = hf_folder[0]
    shutil.copy(os.path.join(folder, "config.json"), tmp_path)
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        data = f.read()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated") as e:
        load_gpt2(str(tmp_path))
    one_line_error(e)


def test_a_folder_without_weights_or_config_and_an_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_gpt2(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 8, "n_embd": 8,
                                                      "n_layer": 1, "n_head": 1, "vocab_size": 5}))
    with pytest.raises(ValueError, match="neither model.safetensors nor pytorch_model.bin"):
        load_gpt2(str(tmp_path))
    with pytest.raises(ValueError, match="neither a folder nor a GPT-2 name"):
        load_gpt2("gpt3")
    assert is_gpt2_name("gpt2-medium") and not is_gpt2_name("gpt2-tiny")
    assert is_gpt2_base("gpt2") and not is_gpt2_base("") and not is_gpt2_base("out/demo/base/best.pt")


# -- the hub, played by a local HTTP server --------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class CutOffHandler(QuietHandler):
    """Promises a whole file, sends a tenth of it, and hangs up: a connection lost mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 10000)
        self.close_connection = True


@contextmanager
def serve(root, handler=QuietHandler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub(hf_folder, tmp_path, monkeypatch):
    """A folder laid out like the hub ({name}/resolve/main/{file}) and an empty cache folder."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)   # 127.0.0.1 must be reached directly
    root = tmp_path / "hub"
    files = root / "gpt2" / "resolve" / "main"
    files.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(hf_folder[0], name), files)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PREFIXGPT_HF_CACHE", str(cache))
    return root, cache


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_download_caches_and_then_needs_no_network(hf_folder, hub, monkeypatch, capsys):
    root, cache = hub
    x = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        expected = hf_folder[1](x).logits
    with serve(root) as url:
        monkeypatch.setenv("PREFIXGPT_HF_ENDPOINT", url)
        model = load_gpt2("gpt2")
    assert "downloading gpt2/model.safetensors: 100%" in capsys.readouterr().err
    assert all_files(cache) == ["gpt2/config.json", "gpt2/model.safetensors"]   # no .tmp left
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], expected, atol=1e-5, rtol=0)
    # the server is gone: the cache alone must do
    again = load_gpt2("gpt2")
    assert capsys.readouterr().err == ""
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], expected, atol=1e-5, rtol=0)


def test_cache_dir_argument_beats_the_environment(hub, tmp_path, monkeypatch):
    root, cache = hub
    mine = tmp_path / "mine"
    with serve(root) as url:
        monkeypatch.setenv("PREFIXGPT_HF_ENDPOINT", url)
        load_gpt2("gpt2", cache_dir=str(mine))
    assert all_files(mine) == ["gpt2/config.json", "gpt2/model.safetensors"]
    assert not cache.exists()


def test_offline_with_an_empty_cache_says_to_pass_a_local_folder(hub, monkeypatch):
    root, cache = hub
    with serve(root) as url:
        pass   # the port is closed again: nothing listens there any more
    monkeypatch.setenv("PREFIXGPT_HF_ENDPOINT", url)
    with pytest.raises(OSError, match="cannot download .*gpt2/resolve/main/config.json.*pass a local folder") as e:
        load_gpt2("gpt2")
    one_line_error(e)
    assert all_files(cache) == []


def test_a_download_cut_off_midway_leaves_nothing_behind(hub, monkeypatch):
    root, cache = hub
    with serve(root, CutOffHandler) as url:
        monkeypatch.setenv("PREFIXGPT_HF_ENDPOINT", url)
        with pytest.raises(OSError, match="cannot download") as e:
            load_gpt2("gpt2")
    one_line_error(e)
    assert all_files(cache) == []   # neither a .tmp nor half a config.json


# -- safetensors, against the safetensors package ---------------------------------------------------

def sample_tensors():
    g = torch.Generator().manual_seed(4)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 2, 3, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(-3, 3),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_reader_is_bit_exact_on_files_the_safetensors_package_writes(tmp_path):
    path = str(tmp_path / "t.safetensors")
    tensors = sample_tensors()
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt", "note": "ignored"})
    back = read_safetensors(path)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name


def test_writer_is_read_back_by_the_safetensors_package(tmp_path):
    path = str(tmp_path / "t.safetensors")
    tensors = sample_tensors()
    tensors["strided"] = torch.arange(12.0).view(3, 4).t()       # not contiguous: written as it reads
    write_safetensors(path, tensors, metadata={"format": "pt"})
    assert os.listdir(tmp_path) == ["t.safetensors"]
    back = safetensors.torch.load_file(path)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert n % 8 == 0                                             # tensor data starts 8-byte aligned


def raw_file(path, header: dict, data: bytes, n=None):
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head) if n is None else n) + head + data)
    return str(path)


@pytest.mark.parametrize("header, data, n, expected", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10 ** 9, "header length"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, None, "'b' starts at byte 8"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12 bytes"),
    ({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 6, None, "2 bytes follow"),
], ids=["huge-header", "truncated", "gap", "size-mismatch", "unknown-dtype", "trailing"])
def test_damaged_safetensors_is_a_one_line_error_naming_the_file(tmp_path, header, data, n, expected):
    path = raw_file(tmp_path / "bad.safetensors", header, data, n)
    with pytest.raises(ValueError, match=expected) as e:
        read_safetensors(path)
    assert "bad.safetensors" in one_line_error(e)


# -- the paper's E2E setting ---------------------------------------------------------------------

def test_e2e_gpt2_config_uses_finetune_fields_and_five_epochs():
    cfg = FinetuneConfig()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    given = parse([os.path.join(root, "config", "finetune_e2e_gpt2.toml")], cfg)
    assert {"base", "method", "n_prefix", "batch_size", "max_iters", "learning_rate"} <= given
    assert (cfg.base, cfg.method, cfg.n_prefix) == ("gpt2-medium", "prefix-reparam", 10)
    assert cfg.max_iters == 5 * math.ceil(42061 / cfg.batch_size)


# -- GPT-2 everywhere a checkpoint is accepted ----------------------------------------------------

@pytest.mark.slow
def test_the_scripts_take_a_gpt2_folder_as_their_base(tmp_path):
    """finetune_prefix.py --base, evaluate.py --ckpt and sample.py --ckpt accept a Hugging Face GPT-2
    folder: the GPT-2 tokenizer, a fingerprinted base, and the prefix refused on another base."""
    from conftest import one_line_error as one_line_run, run
    folder = gpt2_vocab_folder(tmp_path / "gpt2")
    rows = [{"prompt": f"name[{n}] ||", "completion": f" {n} is a pub."} for n in ("Zizzi", "Aromi", "Bibimbap")]
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("finetune_prefix.py", f"--base={folder}", f"--train_file={task}", f"--val_file={task}",
              f"--out_dir={tmp_path}/p", "--n_prefix=3", "--batch_size=3", "--max_iters=4", "--eval_interval=2",
              "--device=cpu")
    assert "bit-identical" in res.stdout
    prefix = f"--prefix={tmp_path}/p/prefix.pt"
    res = run("evaluate.py", "--mode=generate", f"--base={folder}", prefix, "--with_base", f"--data={task}",
              "--max_new_tokens=4")
    assert "prefix.pt  BLEU-4" in res.stdout and "no prefix  BLEU-4" in res.stdout
    res = run("sample.py", f"--base={folder}", prefix, "--prompt=name[Zizzi] ||", "--max_new_tokens=4")
    assert "--- [prefix.pt] ---" in res.stdout
    other = gpt2_vocab_folder(tmp_path / "other", seed=1)
    one_line_run(run("sample.py", f"--base={other}", prefix, check=False), "trained on another base model")
