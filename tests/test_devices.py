"""GPU paths that can be checked without a GPU: bf16 autocast on the CPU, and torch.cuda monkeypatched."""
import torch

from prefix import PrefixTuning, PromptTuning, batch_prefixes
from prefixgpt import runtime
from prefixgpt.decoding import generate
from train import TrainConfig, restore_state


def test_a_prefix_under_bf16_autocast_trains_and_generates(tiny_model, tiny_config):
    """An fp32 prefix joined to bf16 keys: attention kernels refuse the mix unless the join casts it."""
    torch.manual_seed(0)
    x = torch.randint(0, tiny_config.vocab_size, (2, 6))
    for prefix in (PrefixTuning(tiny_config, 3), PromptTuning(tiny_config, 3)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = tiny_model(x, x, prefix_kv=prefix(tiny_model))
        loss.backward()
        assert logits.dtype == torch.bfloat16 and all(p.grad is not None for p in prefix.parameters())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            kv, mask = batch_prefixes([prefix(tiny_model), None], [0, 1])
            out = generate(tiny_model, x, 5, temperature=0, prefix_kv=kv, prefix_mask=mask)
        assert out.shape == (2, 11)


def test_a_named_gpu_becomes_the_current_one(monkeypatch):
    """--device=cuda:1 without torchrun: set_device, so RNG states and the bf16 check are that card's."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: ("autocast", a, k))
    rt = runtime.setup_runtime("cuda:1", "auto")
    assert calls == ["cuda:1"] and rt.device == "cuda:1" and rt.dtype == "bfloat16"
    assert rt.autocast == ("autocast", ("cuda",), {"dtype": torch.bfloat16})


def test_after_a_resume_each_ddp_rank_draws_its_own_random_numbers(tiny_model):
    """Rank 0 gets its saved RNG streams back; rank 1 must not get rank 0's (the same dropout masks)."""
    cfg = TrainConfig()
    opt = torch.optim.AdamW(tiny_model.parameters())
    torch.manual_seed(123)
    ckpt = {"optimizer": opt.state_dict(), "iter_num": 7, "best_val_loss": 1.0,
            "rng": {"torch": torch.get_rng_state(), "batches": torch.Generator().manual_seed(5).get_state()}}
    draws = []
    for rank in (0, 1):
        gen = torch.Generator()
        assert restore_state(ckpt, opt, gen, cfg, rank, "cpu") == (7, 1.0)
        draws.append((torch.rand(3), torch.rand(3, generator=gen)))
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])
    torch.set_rng_state(ckpt["rng"]["torch"])
    assert torch.equal(torch.rand(3), draws[0][0])   # rank 0 continues exactly where it saved


def test_decoding_with_a_prefix_mask_reads_the_gpu_once_per_call_not_per_token(tiny_model, tiny_config, monkeypatch):
    """int(tensor) waits for the GPU. Lengths are Python ints worked out once per batch."""
    kv, mask = batch_prefixes([PrefixTuning(tiny_config, 3)(tiny_model), PrefixTuning(tiny_config, 5)(tiny_model)])
    reads = []
    real_int = torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__int__", lambda t: reads.append(1) or real_int(t))
    generate(tiny_model, torch.zeros(2, 1, dtype=torch.long), 12, temperature=0, prefix_kv=kv, prefix_mask=mask)
    assert len(reads) == 1


def test_every_script_picks_its_device_in_one_place_and_defaults_to_auto():
    from evaluate import EvalConfig
    from finetune_prefix import FinetuneConfig
    from sample import SampleConfig
    for cls in (TrainConfig, FinetuneConfig, EvalConfig, SampleConfig):
        assert cls().device == "auto", cls.__name__
    for script in ("train.py", "finetune_prefix.py", "evaluate.py", "sample.py"):
        with open(script, encoding="utf-8") as f:
            assert "setup_runtime(" in f.read(), script


def test_the_final_pass_uses_the_runs_batch_size_and_autocast(tmp_path, monkeypatch):
    """Not 64 windows whatever batch_size is: with GPT-2's vocabulary and block 1024 that alone is tens of GB."""
    import train
    from data.shakespeare.prepare import prepare
    from data.tokenizer import ByteTokenizer
    prepare("the king said yes.\nthe fool said no.\n" * 60, ByteTokenizer(), str(tmp_path / "c"))
    seen = {}

    def spy(model, data, block_size, batch_size, device, ctx, **kw):
        seen.update(batch_size=batch_size, ctx=ctx)
        return 1.0
    monkeypatch.setattr(train, "full_split_loss", spy)
    train.main([f"--data_dir={tmp_path}/c", f"--out_dir={tmp_path}/o", "--n_layer=1", "--n_head=2", "--n_embd=16",
                "--block_size=16", "--batch_size=3", "--max_iters=1", "--eval_interval=0", "--device=cpu",
                "--dtype=bfloat16", "--plot=false"])
    assert seen["batch_size"] == 3 and isinstance(seen["ctx"], torch.autocast)
