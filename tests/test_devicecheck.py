"""devicecheck.py on the CPU: every check runs and passes, and a planted defect in a path a GPU takes
(the fast attention path, the preallocated cache) makes its check fail. A GPU run is docs/performance.md's."""
import pytest

from checks import devicecheck
import model
from prefixgpt import decoding


def checks(out: str) -> dict:
    """{check name: 'ok' or 'FAIL'} from devicecheck's output."""
    rows = [line for line in out.splitlines() if line.startswith(("ok  ", "FAIL"))]
    return {line[6:].split(" | ")[0].strip(): line[:4].strip() for line in rows}


@pytest.mark.slow
def test_every_numerical_check_runs_and_passes_on_the_cpu(capsys):
    assert devicecheck.main(["--device=cpu", "--dtype=bfloat16", "--scripts=false"]) == 0
    found = checks(capsys.readouterr().out)
    assert set(found.values()) == {"ok"}
    for name in ("forward fp32, prefixes of 3, 6 and 0 slots, one batch: logits",
                 "forward fp32, prompt tuning (P=5): prefix gradient",
                 "bfloat16 autocast, prefix, one length (P=6): loss",
                 "bfloat16 autocast, a cache filled token by token vs one pass",
                 "greedy decoding on cpu, cache, vs the CPU (past block_size)",
                 "a mixed batch of 4 prefixes on cpu vs each row alone",
                 "beam search (width 4) on cpu vs the CPU",
                 "LoRA merged vs beside the weights, on cpu",
                 "one BitFit step on cpu: tensors that are not biases changed"):
        assert name in found, name


@pytest.mark.slow
def test_a_fast_path_that_drops_the_prefix_mask_fails_its_check(capsys, monkeypatch):
    real = model.prefix_attention_fast
    monkeypatch.setattr(model, "prefix_attention_fast",
                        lambda q, k, v, pk, pv, mask=None, p=0.0: real(q, k, v, pk, pv, None, p))
    assert devicecheck.main(["--device=cpu", "--scripts=false"]) == 1
    found = checks(capsys.readouterr().out)
    assert found["forward fp32, prefixes of 3, 6 and 0 slots, one batch: logits"] == "FAIL"
    assert found["forward fp32, prefix, one length (P=6): logits"] == "ok"


@pytest.mark.slow
def test_a_cache_that_loses_the_newest_value_fails_the_decoding_checks(capsys, monkeypatch):
    real = decoding.KVCache.append

    def stale(self, layer, k, v):
        K, V = real(self, layer, k, v)
        if self.n > self.n_prefix:      # from the second step on, the new token's value reads as 0
            V = V.clone()
            V[:, :, -1] = 0
        return K, V
    monkeypatch.setattr(decoding.KVCache, "append", stale)
    assert devicecheck.main(["--device=cpu", "--scripts=false"]) == 1
    found = checks(capsys.readouterr().out)
    assert found["greedy decoding on cpu, cache, vs the CPU (past block_size)"] == "FAIL"
    assert found["the cache's logits on cpu, token by token, prefixes of 3 and 6 slots"] == "FAIL"
    assert found["greedy decoding on cpu, no cache, vs the CPU (past block_size)"] == "ok"


@pytest.mark.slow
def test_the_scripts_run_on_the_device_and_their_checkpoint_scores_the_same(capsys):
    assert devicecheck.main(["--device=cpu", "--dtype=float32"]) == 0
    found = checks(capsys.readouterr().out)
    for name in ("script: train.py --device=cpu (float32, --compile=false)", "script: train.py --device=cpu --resume",
                 "a checkpoint trained on cpu: val loss on the CPU vs on cpu",
                 "script: finetune_prefix.py --device=cpu (prefix)", "script: finetune_prefix.py --device=cpu --method=lora",
                 "script: evaluate.py --device=cpu", "script: sample.py --device=cpu"):
        assert found.get(name) == "ok", name


@pytest.mark.slow
def test_an_error_inside_a_section_is_one_failed_check_and_the_rest_still_run(capsys, monkeypatch):
    def boom(*args):
        raise RuntimeError("no kernel for this\ninput")
    monkeypatch.setattr(devicecheck, "check_autocast", boom)
    assert devicecheck.main(["--device=cpu", "--scripts=false"]) == 1
    found = checks(capsys.readouterr().out)
    assert found["autocast: stopped by RuntimeError: no kernel for this input"] == "FAIL"
    assert found["one BitFit step on cpu: tensors that are not biases changed"] == "ok"   # the last section ran
