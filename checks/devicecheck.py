"""
devicecheck.py — does this device compute what the CPU computes? The paths a GPU takes (SDPA's fused
kernels, bf16 autocast, the preallocated cache, torch.compile, the scripts with --device) run on the
device and are held against the CPU's fp32 reference (the literal softmax path of model.py). One line a
check: what was compared, the difference, the tolerance, ok or FAIL; exit status 1 if any failed.

    python checks/devicecheck.py --device=cuda                   # on a GPU machine (about two minutes)
    python checks/devicecheck.py --device=cpu --dtype=bfloat16   # the same checks on the CPU (what CI runs)
    python checks/devicecheck.py --device=cuda --scripts=false   # the numerical checks only (seconds)

The checks, on small models with random weights (see small_model):
  forward   logits and the prefix's gradient in fp32: no prefix, one prefix length, mixed lengths
            (prefix_mask), prompt tuning; the device's fast path (SDPA) against the CPU's reference.
  autocast  the same batch under the device's autocast (bf16 where it has it): the loss, and the
            greedy choice at every position, against fp32 on the CPU; a cache filled token by token
            under autocast against one forward pass; the weights cast once for decoding against
            autocast's cast at every step (bit for bit).
  padded head  the output head's product on 64-row multiples against the vocabulary as it is.
  kernels   (CUDA only) each attention case, forward and backward, with SDPA's plain-math kernel
            switched off: it still runs, so it is on a fused kernel; the kernels torch.profiler saw.
  decoding  greedy decoding with the cache, without it, and on the CPU: the same tokens; a mixed batch
            of prefixes against each row alone; beam search against the CPU's.
  methods   LoRA merged into its weights against LoRA beside them; one BitFit step leaves every
            other tensor bit-identical.
  scripts   train.py (autocast, torch.compile on CUDA, then --resume), finetune_prefix.py (prefix and
            LoRA), evaluate.py and sample.py with --device, on a generated corpus; the checkpoint
            trained on the device scores the same loss on the CPU.
fp32 checks run with TF32 matmuls off (setup_runtime turns them on for speed, at ~1e-3 relative error).
This script knows the checks and their tolerances; the model, methods and scripts are the project's.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.bins import load_bin  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from prefix import PrefixTuning, PromptTuning, batch_prefixes  # noqa: E402
from prefixgpt import decoding  # noqa: E402
from prefixgpt.checkpoint import load_model  # noqa: E402
from prefixgpt.cli import main_guard, parse, setting  # noqa: E402
from prefixgpt.methods import attach, merge_lora  # noqa: E402
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, setup_runtime  # noqa: E402
from prefixgpt.scoring import decode_rows, full_split_loss  # noqa: E402


@dataclass
class CheckConfig:
    device: str = setting("auto", pattern=DEVICE_PATTERN)
    dtype: str = setting("auto", choices=DTYPES)   # auto: bf16 on a CUDA card that has it, else fp32
    scripts: bool = True       # also run the scripts on the device (train, finetune, evaluate, sample)
    seed: int = 0


class Report:
    """Collects one line per check; `failed` counts the FAILs."""

    def __init__(self):
        self.failed = 0

    def check(self, name: str, diff: float, tol: float, unit: str = "max |diff|"):
        ok = diff <= tol
        self.failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {name:58} | {unit} {diff:.3g} (tolerance {tol:.3g})", flush=True)

    def run(self, section: str, fn):
        """Run a section of checks; an error inside it (a kernel the device lacks, say) is one FAIL line
        with the error, and the sections after it still run."""
        try:
            fn()
        except Exception as e:   # noqa: BLE001 — any error here is a finding to report, not to hide
            self.check(f"{section}: stopped by {type(e).__name__}: {' '.join(str(e).split())[:90]}", 1, 0,
                       unit="raised")

    def note(self, text: str):
        print(f"      {text}", flush=True)


def small_model(seed: int, sharp: bool = False) -> GPT:
    """4 layers, 4 heads, 64 wide, vocab 97, random weights. Token embeddings of std 1 (GPT's init is
    0.02), so logits spread over several units. sharp: every matrix of std 0.5 as well, so attention is
    peaked and every layer changes the next token (a wrong key, value or mask changes what is decoded),
    while the greedy choice still has a clear winner; the decoding checks use it. Its numbers are too
    sensitive for comparing bf16 with fp32, which the gentler model serves."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=96, vocab_size=97, n_layer=4, n_head=4, n_embd=64, dropout=0.0))
    for p in model.parameters():
        if sharp and p.dim() == 2:
            torch.nn.init.normal_(p, std=0.5)
    torch.nn.init.normal_(model.transformer.wte.weight, std=1.0)
    return model.eval()


def random_prefix(config: GPTConfig, n: int, prompt: bool = False):
    """A prefix (or soft prompt) of n slots with values of std 1, as large as the tokens' own."""
    p = PromptTuning(config, n) if prompt else PrefixTuning(config, n)
    for q in p.parameters():
        torch.nn.init.normal_(q, std=1.0)
    return p


def relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest difference, in units of the reference's largest magnitude."""
    return ((a.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def on(model: GPT, device: str, fast: bool) -> GPT:
    m = copy.deepcopy(model).to(device)
    m.fast_attention = fast
    return m


def prefixes(model: GPT, seed: int):
    """The attention cases: name → (prefix module or None, its lengths when mixed, or None)."""
    torch.manual_seed(seed)
    c = model.config
    return {"no prefix": (None, None),
            "prefix, one length (P=6)": (random_prefix(c, 6), None),
            "prefixes of 3, 6 and 0 slots, one batch": (random_prefix(c, 6), [3, 6, 0]),
            "prompt tuning (P=5)": (random_prefix(c, 5, prompt=True), None)}


def run_case(model, prefix, lengths, x, y):
    """Loss and logits of x (B, T) after the prefix; with lengths, row b keeps lengths[b] of its slots."""
    if prefix is None:
        return model(x, y)[::-1]
    kv = prefix(model)
    mask = None
    if lengths is not None:   # each row its own length: cut the one prefix to each row's slots, then pad
        kv, mask = batch_prefixes([[(k[:, :, :n], v[:, :, :n]) for k, v in kv] if n else None
                                   for n in lengths])
    logits, loss = model(x, y, prefix_kv=kv, prefix_mask=mask)
    return loss, logits


def check_forward(r: Report, base: GPT, device: str, x, y, seed: int):
    ref_model, dev_model = on(base, "cpu", fast=False), on(base, device, fast=True)
    for name, (prefix, lengths) in prefixes(base, seed).items():
        out = []   # [(logits, prefix gradient)] of the CPU's reference path, then the device's fast path
        for model, where in ((ref_model, "cpu"), (dev_model, device)):
            p = None if prefix is None else copy.deepcopy(prefix).to(where)
            loss, logits = run_case(model, p, lengths, x.to(where), y.to(where))
            grad = None
            if p is not None:
                loss.backward()
                grad = torch.cat([q.grad.flatten() for q in p.parameters()]).cpu()
            out.append((logits.detach().cpu(), grad))
        (ref, g_ref), (logits, g) = out
        r.check(f"forward fp32, {name}: logits", relative(logits, ref), 1e-5, unit="max |diff| / max |ref|")
        if g_ref is not None:
            r.check(f"forward fp32, {name}: prefix gradient", relative(g, g_ref), 1e-4, unit="max |diff| / max |ref|")


def check_padded_head(r: Report, base: GPT, device: str, x, y):
    """The head's product padded to a multiple of 64 rows (model.head_logits; on a GPU by default): the
    same logits, loss and gradient as the vocabulary as it is (97 here, 128 padded)."""
    runs = []
    for pad in (False, True):
        m = on(base, device, fast=True)
        m.pad_head = pad
        logits, loss = m(x.to(device), y.to(device))
        loss.backward()
        runs.append((logits.detach(), loss.detach(), m.lm_head.weight.grad))
    for what, a, b in zip(("logits", "loss", "head gradient"), *runs):
        r.check(f"padded head on {device} vs as it is: {what}", relative(b, a), 1e-5, unit="max |diff| / max |ref|")


def check_autocast(r: Report, base: GPT, rt, x, y, seed: int):
    if rt.dtype == "float32":
        r.note(f"autocast: {rt.device} runs fp32 (no native bf16), nothing to compare")
        return
    ref_model, dev_model = on(base, "cpu", fast=False), on(base, rt.device, fast=True)
    for name, (prefix, lengths) in prefixes(base, seed).items():
        with torch.no_grad():
            loss_ref, logits_ref = run_case(ref_model, prefix, lengths, x, y)
        p = None if prefix is None else copy.deepcopy(prefix).to(rt.device)
        with torch.no_grad(), rt.autocast:
            loss, logits = run_case(dev_model, p, lengths, x.to(rt.device), y.to(rt.device))
        rel = abs(loss.item() - loss_ref.item()) / loss_ref.item()
        r.check(f"{rt.dtype} autocast, {name}: loss", rel, 0.01, unit="relative diff")
        agree = (logits.float().cpu().argmax(-1) == logits_ref.argmax(-1)).float().mean().item()
        r.check(f"{rt.dtype} autocast, {name}: greedy choice", 1 - agree, 0.03, unit="share that differs")
    # the cache under autocast: keys and values stored in bf16, filled one token at a time
    kv = random_prefix(base.config, 6).to(rt.device)(dev_model)
    with torch.no_grad(), rt.autocast:
        full, _ = dev_model(x[:1].to(rt.device), prefix_kv=kv)                               # (1, T, vocab)
        cache = decoding.KVCache(base.config, 1, 6 + x.size(1), kv)
        steps = [decoding.step(dev_model, x[:1, t:t + 1].to(rt.device), cache) for t in range(x.size(1))]
    stepped = torch.stack(steps, dim=1)                                                       # (1, T, vocab)
    r.check(f"{rt.dtype} autocast, a cache filled token by token vs one pass", relative(stepped, full), 0.02,
            unit="max |diff| / max |ref|")
    # weights cast once for decoding (decoding.cast_for_inference) against autocast's cast at every step
    cast = decoding.cast_for_inference(dev_model, rt.dtype)
    with torch.no_grad(), rt.autocast:
        once, _ = cast(x[:1].to(rt.device), prefix_kv=kv)
        tokens = [decoding.generate(m, x[:1, :8].to(rt.device), 24, temperature=0, prefix_kv=kv) for m in (dev_model, cast)]
    r.check(f"{rt.dtype} weights cast once vs cast by autocast: logits", (once - full).abs().max().item(), 0)
    r.check(f"{rt.dtype} weights cast once vs cast by autocast: greedy tokens", float(not torch.equal(*tokens)), 0,
            unit="differs")


def check_kernels(r: Report, base: GPT, rt, x, y, seed: int):
    """SDPA picks its kernel silently and falls back to plain math when a fused one cannot take the
    inputs; with the math kernel switched off, that fallback is an error instead."""
    if not rt.device.startswith("cuda"):
        r.note("kernels: CUDA only (SDPA's fused kernels are GPU kernels)")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    model = on(base, rt.device, fast=True)
    for name, (prefix, lengths) in prefixes(base, seed).items():
        for dtype_name, ctx in (("fp32", torch.autocast("cuda", enabled=False)), (rt.dtype, rt.autocast)):
            p = None if prefix is None else copy.deepcopy(prefix).to(rt.device)

            def step():
                with ctx:
                    loss, _ = run_case(model, p, lengths, x.to(rt.device), y.to(rt.device))
                loss.backward()
                torch.cuda.synchronize()
            try:
                with sdpa_kernel(fused):
                    step()
                ok, why = True, ""
            except RuntimeError as e:
                ok, why = False, " ".join(str(e).split())[:150]
            r.check(f"kernels {dtype_name}, {name}: runs with the math kernel off", 0 if ok else 1, 0, unit="failed")
            if not ok:
                r.note(why)
                continue
            try:   # which kernels ran: names as torch.profiler reports them
                with sdpa_kernel(fused), profile(activities=[ProfilerActivity.CUDA]) as prof:
                    step()
                kernels = sorted({e.key for e in prof.key_averages() if any(
                    s in e.key.lower() for s in ("flash", "fmha", "efficient", "cudnn", "sdpa", "attention"))})
                r.note("kernels: " + ("; ".join(k[:80] for k in kernels[:4]) or "(none named as attention)"))
            except Exception as e:   # the profiler is a report, not the check
                r.note(f"(torch.profiler failed: {' '.join(str(e).split())[:100]})")
    # decoding through the KVCache (its keys are views into preallocated buffers): one prefix, where
    # each new token needs no mask, and mixed lengths, where the cache carries a mask
    torch.manual_seed(seed)
    one = random_prefix(base.config, 6).to(rt.device)(model)
    mixed = batch_prefixes([random_prefix(base.config, n).to(rt.device)(model) for n in (3, 6)])
    for name, (kv, mask) in (("one prefix", (one, None)), ("mixed lengths", mixed)):
        try:
            with sdpa_kernel(fused), rt.autocast:
                decoding.generate(model, x[:2, :5].to(rt.device), 20, temperature=0, prefix_kv=kv, prefix_mask=mask)
            ok, why = True, ""
        except RuntimeError as e:
            ok, why = False, " ".join(str(e).split())[:150]
        r.check(f"kernels {rt.dtype}, decoding with the cache, {name}: math kernel off", 0 if ok else 1, 0,
                unit="failed")
        if why:
            r.note(why)


def check_decoding(r: Report, base: GPT, device: str, seed: int):
    cpu, dev = on(base, "cpu", fast=False), on(base, device, fast=True)
    torch.manual_seed(seed)
    prefix = random_prefix(base.config, 6)
    prompt = torch.randint(0, base.config.vocab_size, (2, 5))
    out = {}
    for name, model, where, cache in (("cpu", cpu, "cpu", False), ("cache", dev, device, True),
                                      ("no cache", dev, device, False)):
        kv = prefix.to(where)(model)
        # 120 new tokens: past the 96-slot block, so the window slides and the cache restarts
        decode = decoding.generate if cache else type(model).generate                 # with the KV cache, or the plain way
        out[name] = decode(model, prompt.to(where), 120, temperature=0, prefix_kv=kv).cpu()
    for name in ("cache", "no cache"):
        differ = (out[name] != out["cpu"]).float().mean().item()
        r.check(f"greedy decoding on {device}, {name}, vs the CPU (past block_size)", differ, 0,
                unit="share of tokens that differ")
    # the cache's logits, one token at a time, against one pass of the CPU's reference path over the
    # same tokens; two rows with prefixes of 3 and 6 slots, so the cache carries a mask
    seq = out["cpu"][:, :80]                                                         # (2, 80)
    with torch.no_grad():
        kv = [(k, v) for k, v in prefix.to("cpu")(cpu)]
        kv, mask = batch_prefixes([[(k[:, :, :3], v[:, :, :3]) for k, v in kv], kv])
        ref, _ = cpu(seq, prefix_kv=kv, prefix_mask=mask)                            # (2, 80, vocab)
        cache = decoding.KVCache(base.config, 2, 6 + seq.size(1), [(k.to(device), v.to(device)) for k, v in kv],
                        mask.to(device))
        steps = torch.stack([decoding.step(dev, seq[:, t:t + 1].to(device), cache).cpu() for t in range(seq.size(1))], 1)
    r.check(f"the cache's logits on {device}, token by token, prefixes of 3 and 6 slots", relative(steps, ref),
            1e-4, unit="max |diff| / max |ref|")
    torch.manual_seed(seed + 1)
    rows = [(random_prefix(base.config, n).to(device)(dev) if n else None,
             torch.randint(0, base.config.vocab_size, (3 + n,)).tolist()) for n in (2, 7, 0, 4)]
    together = decode_rows(dev, rows, 20, None)
    alone = [decode_rows(dev, [row], 20, None)[0][:len(together[0])] for row in rows]
    differ = np.mean([a != b for ra, rb in zip(together, alone) for a, b in zip(ra, rb)])
    r.check(f"a mixed batch of 4 prefixes on {device} vs each row alone", float(differ), 0,
            unit="share of tokens that differ")
    beams = [decoding.beam_search(model, prompt[:1].to(where), 20, beam_width=4, prefix_kv=prefix.to(where)(model))
             for model, where in ((cpu, "cpu"), (dev, device))]
    r.check(f"beam search (width 4) on {device} vs the CPU", float(beams[0] != beams[1]), 0, unit="differs")


def check_methods(r: Report, base: GPT, device: str, x, y):
    model = attach("lora", on(base, device, fast=True))
    for name, p in model.named_parameters():
        if name.endswith(".B"):   # LoRA's B starts at zero: make the update real
            torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        before = model(x.to(device))[0]
        after = merge_lora(model)(x.to(device))[0]
    r.check(f"LoRA merged vs beside the weights, on {device}", relative(after, before), 1e-5,
            unit="max |diff| / max |ref|")
    model = attach("bitfit", on(base, device, fast=True)).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(x.to(device), y.to(device))[1].backward()
    opt.step()
    changed = sum(not torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    r.check(f"one BitFit step on {device}: tensors that are not biases changed", changed, 0, unit="count")


def script(args: list[str], r: Report, name: str, cwd: str) -> str:
    res = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    r.check(f"script: {name}", res.returncode, 0, unit="exit status")
    if res.returncode:
        r.note((res.stderr.strip().splitlines() or ["(no output)"])[-1][:150])
    return res.stdout


def check_scripts(r: Report, rt, seed: int):
    root = ROOT
    dev = f"--device={rt.device}"
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(seed)
        names, foods = ["Blue Spice", "The Mill", "Zizzi", "Loch Fyne", "Aromi"], ["Chinese", "Italian", "French"]
        rows = []
        for _ in range(400):
            n, f = names[rng.integers(5)], foods[rng.integers(3)]
            rows.append((f"name[{n}], food[{f}] ||", f" {n} serves {f} food."))
        with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as fh:
            fh.write("".join(p + c + "\n" for p, c in rows))
        for split, part in (("train", rows[:300]), ("val", rows[300:340])):
            with open(os.path.join(tmp, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in part)
        script(["data/shakespeare/prepare.py", f"--input={tmp}/corpus.txt", f"--out_dir={tmp}/corpus"], r,
               "data/shakespeare/prepare.py (a generated corpus)", root)
        train = ["train.py", f"--data_dir={tmp}/corpus", f"--out_dir={tmp}/base", "--n_layer=2", "--n_head=2",
                 "--n_embd=64", "--block_size=64", "--batch_size=8", "--eval_interval=20", "--eval_iters=2",
                 "--learning_rate=3e-3", "--plot=false", dev, f"--dtype={rt.dtype}"]
        compile_flag = f"--compile={'true' if rt.device.startswith('cuda') else 'false'}"
        script(train + ["--max_iters=40", "--lr_decay_iters=60", compile_flag], r,
               f"train.py {dev} ({rt.dtype}, {compile_flag})", root)
        script(train + ["--max_iters=60", "--lr_decay_iters=60", "--resume"], r, f"train.py {dev} --resume", root)
        ckpt = f"{tmp}/base/best.pt"
        if os.path.isfile(ckpt):
            model, _ = load_model(ckpt)
            val = load_bin(f"{tmp}/corpus")[1]
            cpu = full_split_loss(model, val, 64, 16, "cpu")
            on_dev = full_split_loss(on(model, rt.device, fast=True), val, 64, 16, rt.device)
            r.check(f"a checkpoint trained on {rt.device}: val loss on the CPU vs on {rt.device}",
                    abs(cpu - on_dev), 1e-4, unit="|diff|")
        tune = ["finetune_prefix.py", f"--base={ckpt}", f"--train_file={tmp}/train.jsonl",
                f"--val_file={tmp}/val.jsonl", "--batch_size=8", "--max_iters=30", "--eval_interval=10",
                "--learning_rate=3e-2", dev, f"--dtype={rt.dtype}"]
        script(tune + [f"--out_dir={tmp}/prefix", "--n_prefix=4"], r, f"finetune_prefix.py {dev} (prefix)", root)
        script(tune + [f"--out_dir={tmp}/lora", "--method=lora", "--learning_rate=1e-2"], r,
               f"finetune_prefix.py {dev} --method=lora", root)
        script(["evaluate.py", "--mode=generate", f"--base={ckpt}", f"--prefix={tmp}/prefix/prefix.pt",
                f"--data={tmp}/val.jsonl", "--max_examples=5", "--with_base", dev], r, f"evaluate.py {dev}", root)
        out = script(["sample.py", f"--base={ckpt}", f"--prefix={tmp}/prefix/prefix.pt", "--with_base",
                      "--prompt=name[Zizzi], food[French] ||", "--max_new_tokens=30", "--temperature=0", "--num_samples=1", dev],
                     r, f"sample.py {dev}", root)
        r.note("sample: " + " | ".join(line.strip() for line in out.strip().splitlines()[-4:])[:200])


def main(argv=None):
    cfg = CheckConfig()
    parse(argv, cfg, prog="checks/devicecheck.py", description=__doc__.split("\n\n")[0])
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    name = torch.cuda.get_device_name(rt.device) if rt.device.startswith("cuda") else rt.device
    print(f"devicecheck: {name}, torch {torch.__version__}, autocast {rt.dtype}", flush=True)
    r = Report()
    base = small_model(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randint(0, base.config.vocab_size, (3, 40), generator=g)
    y = torch.roll(x, -1, 1)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # fp32 means fp32 here
    sections = [("forward", lambda: check_forward(r, base, rt.device, x, y, cfg.seed)),
                ("padded head", lambda: check_padded_head(r, base, rt.device, x, y)),
                ("autocast", lambda: check_autocast(r, base, rt, x, y, cfg.seed)),
                ("kernels", lambda: check_kernels(r, base, rt, x, y, cfg.seed)),
                ("decoding", lambda: check_decoding(r, small_model(cfg.seed, sharp=True), rt.device, cfg.seed)),
                ("methods", lambda: check_methods(r, base, rt.device, x, y))]
    try:
        for name, section in sections:
            r.run(name, section)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if cfg.scripts:
        r.run("scripts", lambda: check_scripts(r, rt, cfg.seed))
    print(f"devicecheck: {r.failed} check(s) failed" if r.failed else "devicecheck: every check passed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
