"""Every config/*.toml is read by the script it is for, without an unknown key or a value out of range,
and the larger GPU base is the size docs/family.md says it is."""
import glob
import os

import pytest

from conftest import ROOT
from finetune_prefix import FinetuneConfig
from model import GPT, GPTConfig
from prefixgpt.cli import parse
from train import TrainConfig

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.toml")))


def read_config(path):
    """(the script's settings, the model's settings or None) as that script would parse the file."""
    if os.path.basename(path).startswith("finetune_"):
        cfg = FinetuneConfig()
        parse([path], cfg)
        return cfg, None
    cfg, model_cfg = TrainConfig(), GPTConfig(vocab_size=0)
    parse([path], cfg, model_cfg)
    return cfg, model_cfg


def test_the_config_folder_holds_the_configs_the_readme_runs():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"demo_pretrain.toml", "finetune_e2e.toml", "gpu_pretrain.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_for_its_script(path):
    cfg, model_cfg = read_config(path)   # raises on an unknown key or a value outside its range
    assert cfg is not None and (model_cfg is None or model_cfg.n_embd % model_cfg.n_head == 0)


def test_the_gpu_base_is_ten_times_the_demos_and_reads_the_demos_corpus():
    gpu, gpu_model = read_config(os.path.join(ROOT, "config", "gpu_pretrain.toml"))
    demo, demo_model = read_config(os.path.join(ROOT, "config", "demo_pretrain.toml"))
    assert gpu.data_dir == demo.data_dir and gpu_model.block_size == demo_model.block_size
    sizes = [GPT(GPTConfig(**{**vars(m), "vocab_size": 2048})).num_params() for m in (gpu_model, demo_model)]
    assert sizes[0] == 11_433_984 and 10 <= sizes[0] / sizes[1] <= 11   # docs/family.md: 11.43M, 10 × the demo's
    assert gpu.batch_size * gpu_model.block_size * gpu.max_iters == 30_720_000   # ~30M tokens
    assert gpu_model.dropout > 0   # ~10 passes over a 2.86M-token corpus: it would overfit without


def test_ckpt_is_another_name_for_base_in_every_script_that_takes_a_base(capsys):
    """One name for the frozen base (--base); --ckpt, nanoGPT's, still works and --help says so."""
    from evaluate import EvalConfig
    from sample import SampleConfig
    for make in (EvalConfig, SampleConfig):
        cfg = make()
        assert parse(["--ckpt=some/best.pt"], cfg) == {"base"} and cfg.base == "some/best.pt"
    with pytest.raises(SystemExit):
        parse(["--help"], SampleConfig())
    assert "--ckpt is another name for --base" in capsys.readouterr().out
