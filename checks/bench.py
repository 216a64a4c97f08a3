"""
bench.py — speed, measured in one run on one machine and read as ratios: pretraining against nanoGPT
(the default suite), and where prefixes matter (--suite=prefix) against full fine-tuning and
Hugging Face transformers + PEFT.

    python checks/bench.py                                   # prefixgpt alone, nanoGPT's CPU "baby" config
    python checks/bench.py --nanogpt_dir=../nanoGPT          # and nanoGPT itself, taking turns with prefixgpt
    python checks/bench.py --suite=prefix --size=both        # tuning step, decoding, mixed batches, profiles
    python checks/bench.py --suite=prefix --quick            # the same at tiny settings (seconds; a smoke test)
    python checks/bench.py --suite=prefix --size=both --device=cuda   # on a GPU, bf16 (about 4 minutes on an H100)

--suite=prefix is described at prefix_suite below (section 6: activation checkpointing). The rest of this note is about pretraining.

Both train nanoGPT's README "baby" settings (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000
iterations, lr 1e-3, dropout 0, on CPU) on Tiny Shakespeare. The two runs never share the CPU: they
take turns, each stopped (SIGSTOP) while the other runs, swapping every --slice_s seconds. Machines
of this type have fast and slow spells (step times here swing between ~35 and ~47 ms within minutes),
and taking turns puts both runs through the same spells, so their ratio is the number to read.
nanoGPT needs its char-level data first: `cd ../nanoGPT && python data/shakespeare_char/prepare.py`
(it downloads input.txt; copy one in to work offline). Byte tokens on Tiny Shakespeare are the same
sequence as nanoGPT's characters, so the losses compare directly; both models are also scored the
same way at the end, over the whole val split, by this repo's code (model.py with gelu="exact" is
nanoGPT's architecture, so nanoGPT's checkpoint loads into it key for key).
prefixgpt's data: `python data/shakespeare/prepare.py`.
"""
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from model import GPT, GPTConfig  # noqa: E402
from prefix import PrefixTuning, freeze  # noqa: E402
from prefixgpt import decoding  # noqa: E402
from prefixgpt.checkpoint import load_model
from prefixgpt.cli import main_guard, parse, setting  # noqa: E402
from prefixgpt.gpt2 import gpt2_state_dict  # noqa: E402
from prefixgpt.optim import make_adamw  # noqa: E402
from prefixgpt.runtime import DEVICE_PATTERN, DTYPES, setup_runtime  # noqa: E402
from prefixgpt.scoring import full_split_loss, decode_rows  # noqa: E402
from prefixgpt.torchio import safe_torch_load  # noqa: E402

# nanoGPT's README command for a CPU ("baby" model), flag for flag; --max_iters and --lr_decay_iters
# (2000 there) are added from --max_iters
NANOGPT_BABY = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--dropout=0.0"]


@dataclass
class BenchConfig:
    suite: str = setting("pretrain", choices=("pretrain", "prefix"))
    nanogpt_dir: str = ""     # a checkout of github.com/karpathy/nanoGPT; empty = prefixgpt only
    max_iters: int = setting(2000, min=1)   # fewer for a quick look (the loss is then not comparable)
    seed: int = 1337
    slice_s: float = setting(2.0, gt=0.0)   # with nanoGPT: seconds each run gets before the other one's turn
    # --suite=prefix only:
    size: str = setting("toy", choices=("toy", "gpt2", "both"))   # toy: 4x4x128; gpt2: GPT-2 small's shape
    quick: bool = False       # tiny batches, few tokens, one round: proves it runs, measures nothing
    rounds: int = setting(5, min=1)   # interleaved rounds per comparison (gpt2 uses half, at least 2)
    device: str = setting("cpu", pattern=DEVICE_PATTERN)
    dtype: str = setting("auto", choices=DTYPES)   # auto: bf16 autocast on a CUDA card that has it


class Job:
    """A training run as a process, with its log file and the seconds it spent running (not stopped)."""

    def __init__(self, name, cmd, cwd, log_path):
        self.name, self.cmd, self.cwd, self.log_path = name, cmd, cwd, log_path
        self.active_s, self.turns, self.proc = 0.0, 0, None

    def start(self):
        print(f"$ (cd {self.cwd} && {' '.join(self.cmd)})", flush=True)
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()


def take_turns(jobs: list[Job], slice_s: float):
    """Run the jobs one at a time in turns of slice_s seconds until all have exited; the others wait
    stopped (a job starts at its first turn). Each job's active_s is the time it spent running."""
    alive = list(jobs)
    try:
        while alive:
            job = alive.pop(0)
            if job.proc is None:
                job.start()
            else:
                os.kill(job.proc.pid, signal.SIGCONT)
            job.turns += 1
            t0 = time.perf_counter()
            try:
                job.proc.wait(timeout=slice_s if alive else None)   # alone: no reason to stop it
                job.log.close()
            except subprocess.TimeoutExpired:
                os.kill(job.proc.pid, signal.SIGSTOP)
                alive.append(job)
            job.active_s += time.perf_counter() - t0
    finally:
        for job in alive:   # interrupted: leave no stopped process behind
            if job.proc is not None:
                job.proc.kill()
    for job in jobs:
        if job.proc.returncode != 0:
            last = (job.output().strip().splitlines() or ["?"])[-1]
            raise ValueError(f"{job.name} failed (exit {job.proc.returncode}): {last}")


def training_seconds(ms_per_iter: list[float], n_outliers: int) -> float:
    """Sum of the step times, with the n_outliers longest (steps that held a pause for the other run's
    turn, or an evaluation) counted at the median step time instead."""
    median = statistics.median(ms_per_iter)
    kept = sorted(ms_per_iter)[:len(ms_per_iter) - n_outliers]
    return (sum(kept) + n_outliers * median) / 1000


def whole_split_loss(model, val_path: str, block_size: int) -> float:
    """Loss over every block_size window of a val.bin, the same function for both runs."""
    data = np.fromfile(val_path, dtype=np.uint16)
    return full_split_loss(model, data, block_size, 64, "cpu", contextlib.nullcontext())


def prefixgpt_job(cfg: BenchConfig, out_dir: str) -> Job:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_baby.toml", f"--out_dir={out_dir}",
           f"--max_iters={cfg.max_iters}", f"--lr_decay_iters={cfg.max_iters}", f"--seed={cfg.seed}",
           "--log_interval=1", "--plot=false"]
    return Job("prefixgpt", cmd, os.getcwd(), out_dir + ".log")


def prefixgpt_result(job: Job, out_dir: str) -> dict:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    ms = [r["ms_per_iter"] for r in rows if "ms_per_iter" in r]
    evals = [r for r in rows if "val_loss" in r]
    model, ckpt = load_model(os.path.join(out_dir, "best.pt"))
    tc = ckpt["train_config"]
    data_dir = tc["data_dir"]
    tokens = tc["batch_size"] * model.config.block_size * tc.get("grad_accum", 1)
    return {"active_s": job.active_s, "train_s": training_seconds(ms, job.turns - 1),
            "flops_per_iter": train_flops_per_token(model.config) * tokens,
            "median_ms": statistics.median(ms), "val_loss": evals[-1]["val_loss"],
            "val_loss_full": whole_split_loss(model, os.path.join(data_dir, "val.bin"), model.config.block_size)}


def nanogpt_job(cfg: BenchConfig, out_dir: str) -> Job:
    root = cfg.nanogpt_dir
    if not os.path.isfile(os.path.join(root, "train.py")):
        raise FileNotFoundError(f"{root}/train.py not found: --nanogpt_dir must be a nanoGPT checkout")
    if not os.path.isfile(os.path.join(root, "data", "shakespeare_char", "train.bin")):
        raise FileNotFoundError(f"{root}/data/shakespeare_char/train.bin not found: run "
                                f"`python data/shakespeare_char/prepare.py` in {root} first")
    cmd = [sys.executable, "train.py", *NANOGPT_BABY, f"--max_iters={cfg.max_iters}",
           f"--lr_decay_iters={cfg.max_iters}", f"--out_dir={out_dir}"]
    return Job("nanoGPT", cmd, root, out_dir + ".log")


def nanogpt_result(job: Job, cfg: BenchConfig, out_dir: str) -> dict:
    text = job.output()
    # "iter 12: loss 3.1, time 41.20ms, ..." — an iteration that evaluated also holds the eval's time
    times = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", text, re.M)]
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", text, re.M)
    if not times or not evals:
        raise ValueError("could not read nanoGPT's log: is --nanogpt_dir an unmodified nanoGPT?")
    # its best checkpoint, in this repo's GPT: the same architecture, the same parameter names
    ckpt = safe_torch_load(os.path.join(out_dir, "ckpt.pt"), "nanoGPT checkpoint")
    model = GPT(GPTConfig(**{k: ckpt["model_args"][k] for k in
                             ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}, gelu="exact"))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    val_path = os.path.join(cfg.nanogpt_dir, "data", "shakespeare_char", "val.bin")
    c = ckpt.get("config", {})
    tokens = c.get("batch_size", 12) * model.config.block_size * c.get("gradient_accumulation_steps", 1)
    return {"active_s": job.active_s, "train_s": training_seconds(times, job.turns - 1 + len(evals)),
            "flops_per_iter": train_flops_per_token(model.config) * tokens,
            "median_ms": statistics.median(times), "val_loss": float(evals[-1][2]),
            "val_loss_full": whole_split_loss(model.eval(), val_path, model.config.block_size)}


def train_flops_per_token(c: GPTConfig) -> float:
    """Multiply-adds ×2 of one token's forward pass, ×3 for the backward (which does each matmul twice:
    for the inputs' gradient and the weights'). Per layer: Q, K, V and the output projection (4·C²),
    the MLP (8·C²), and attention's two products against up to block_size keys (2·T·C); then the head
    (C·vocab). Attention is counted over the whole block, not the causal half, as is usual."""
    C, T = c.n_embd, c.block_size
    per_layer = 12 * C * C + 2 * T * C
    return 3 * 2 * (c.n_layer * per_layer + C * c.vocab_size)


def matmul_peak(device: str, n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matmul rate, FLOP/s: the best of reps products of two n×n matrices. The
    yardstick for a training step's own rate, measured in the same run."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):                               # the first one warms up
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def sync(device: str):
    """Wait for the GPU (a no-op on the CPU): a time taken before it would miss queued work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv):
    cfg = BenchConfig()
    parse(argv, cfg, prog="checks/bench.py", description=__doc__.split("\n\n")[0])
    if cfg.suite == "prefix":
        return prefix_suite(cfg)
    return pretrain_suite(cfg)


def pretrain_suite(cfg: BenchConfig) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours = os.path.join(tmp, "prefixgpt")
        jobs = [prefixgpt_job(cfg, ours)]
        if cfg.nanogpt_dir:
            theirs = os.path.join(tmp, "nanogpt")
            jobs.append(nanogpt_job(cfg, theirs))
        take_turns(jobs, cfg.slice_s)
        results["prefixgpt"] = prefixgpt_result(jobs[0], ours)
        if cfg.nanogpt_dir:
            results["nanoGPT"] = nanogpt_result(jobs[1], cfg, theirs)
    how = "taking turns" if cfg.nanogpt_dir else "alone"
    print(f"\nnanoGPT's CPU baby config, {cfg.max_iters} iterations, seed {cfg.seed}, {how} on this machine:")
    print(f"{'':10} {'active s':>9} {'train s':>8} {'median ms/iter':>15} {'val (20-batch est.)':>20} "
          f"{'val (whole split)':>18}")
    for name, r in results.items():
        print(f"{name:10} {r['active_s']:9.1f} {r['train_s']:8.1f} {r['median_ms']:15.1f} "
              f"{r['val_loss']:20.4f} {r['val_loss_full']:18.4f}")
    if "nanoGPT" in results:
        a, b = results["prefixgpt"], results["nanoGPT"]
        print(f"\nprefixgpt / nanoGPT: active time x{a['active_s'] / b['active_s']:.3f}, "
              f"training time x{a['train_s'] / b['train_s']:.3f}, ms/iter x{a['median_ms'] / b['median_ms']:.3f}")
    peak = matmul_peak("cpu")   # measured now, after the runs, on the same (now idle) machine
    print(f"\nfp32 matmul peak of this machine (2048x2048 by 2048x2048, best of 10): {peak / 1e9:.1f} GFLOP/s")
    for name, r in results.items():
        rate = r["flops_per_iter"] / (r["median_ms"] / 1000)
        r["peak_fraction"] = rate / peak
        print(f"{name:10} {r['flops_per_iter'] / 1e9:.2f} GFLOP per iteration at the median step: "
              f"{rate / 1e9:.1f} GFLOP/s, {100 * rate / peak:.1f}% of the matmul peak")
    return results


# ==============================================================================================
# --suite=prefix: speed where prefixes matter, at two sizes (toy: nanoGPT's baby shape, 4 layers x 4
# heads x 128; gpt2: GPT-2 small's shape, 124M parameters, random weights). Every comparison is timed
# in interleaved rounds (a, b, c, a, b, c, ...) in this one process, so all sides go through the same
# fast and slow spells of the machine, and is read as a ratio of medians:
#   1. one tuning step: prefix tuning (frozen base) vs full fine-tuning vs transformers + PEFT's prefix
#      tuning, with the bytes each holds in parameters, gradients, optimiser state, saved activations;
#   2. greedy decoding at batch 1 after a 10-slot prefix, from an 8-token prompt until the block is
#      full: with the KV cache, without it, and transformers' generate with the prefix as its cache;
#   3. 16 different prefixes (4..19 slots) and 16 prompts: one mixed batch vs one row after another,
#      and transformers one after another (PEFT cannot batch different prefixes: its issue #759);
#   4. where the time goes: torch.profiler's top operators in one tuning step and one decoding step,
#      and (vocabularies that are not a multiple of 64, GPT-2's 50,257) the output head's two matmuls
#      against the same head padded to a multiple of 64;
#   5. (CUDA, gpt2 only) the largest batch of 1014-token sequences whose tuning step fits in the card's
#      memory: prefix tuning against full fine-tuning.
# With --device=cuda the tuning batches are larger (GPU_WORKLOADS: the CPU's would time kernel launches),
# and bf16 autocast is used where the card has it. `python checks/devicecheck.py --device=cuda` checks that
# the same paths compute there what they compute on the CPU.
# transformers and peft are needed for their columns only; without them those are skipped.

# toy keeps nanoGPT's exact GELU (as this project's own models do: docs/pretraining.md), gpt2 GPT-2's tanh form; transformers
# gets the same one (its "gelu" and "gelu_new")
SHAPES = {"toy": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=256, gelu="exact"),
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, gelu="tanh")}
HF_ACTIVATION = {"exact": "gelu", "tanh": "gelu_new"}
N_PREFIX, PROMPT, N_SERVE = 10, 8, 16


@dataclass
class Workload:
    tune_batch: int       # sequences per tuning step
    tune_T: int           # tokens per sequence
    block: int            # block_size: decoding runs until it is full
    serve_new: int        # new tokens per row when serving 16 prefixes
    uncached_points: int  # contexts at which a decoding step without the cache is timed


WORKLOADS = {"toy": Workload(12, 64, 256, 32, 8), "gpt2": Workload(4, 64, 1024, 32, 6)}
QUICK = {"toy": Workload(2, 16, 64, 4, 2), "gpt2": Workload(1, 16, 64, 2, 2)}
# on a GPU, the CPU's tuning batches would time kernel launches, not work: batches that fill the card
GPU_WORKLOADS = {"toy": Workload(64, 240, 256, 32, 8), "gpt2": Workload(16, 1000, 1024, 32, 6)}


def race(fns: dict, rounds: int, device: str) -> dict[str, float]:
    """Median seconds per call of each fn: one warm-up call each, then `rounds` interleaved rounds."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def optional_hf():
    """(transformers, peft), or (None, None) with a one-line note when they are not installed."""
    try:
        import peft
        import transformers
        transformers.logging.set_verbosity_error()
        # their notes about their own deprecated names (PEFT 0.21 passes past_key_values, which
        # transformers 5.24 renamed) are not this benchmark's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        return transformers, peft
    except ImportError:
        print("note: transformers/peft not installed (pip install -r requirements-dev.txt): their columns are skipped")
        return None, None


def build_models(size: str, block: int, device: str, transformers):
    """This project's GPT with random weights and, with transformers installed, the same weights in its
    GPT2LMHeadModel (so both sides compute the same numbers). Both in eval mode."""
    config = GPTConfig(block_size=block, bias=True, dropout=0.0, **SHAPES[size])
    torch.manual_seed(0)
    if transformers is None:
        return GPT(config).to(device).eval(), None
    s = SHAPES[size]
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], vocab_size=s["vocab_size"],
        n_positions=block, activation_function=HF_ACTIVATION[s["gelu"]], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
        eos_token_id=None)).eval()
    state = gpt2_state_dict(hf.state_dict(), config, "transformers' GPT2LMHeadModel")
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model = GPT(config)
    model.load_state_dict(state)
    return model.to(device).eval(), hf.to(device)


def random_prefix_kv(config: GPTConfig, P: int, device: str, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    shape = (1, config.n_head, P, config.head_dim)
    return [(torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device))
            for _ in range(config.n_layer)]


def hf_cache(transformers, prefix_kv):
    """A prefix as transformers' cache; a fresh one per call, since generate appends to it in place."""
    return transformers.DynamicCache([(k.clone(), v.clone()) for k, v in prefix_kv])


def memory_bytes(modules: list, optimizer, loss_fn, device: str) -> dict:
    """Bytes one tuning step holds: parameters, gradients and optimiser state (exact: read off the tensors
    after a step) and the activations the forward pass saves for the backward (distinct storages, the
    parameters excluded, caught by a saved-tensors hook). On a GPU, also the allocator's peak."""
    params = [p for m in modules for p in m.parameters()]
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_storages:
            saved[s.data_ptr()] = s.nbytes()
        return t
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    optimizer.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)                   # noqa: E731
    out = {"params": nbytes(params), "grads": nbytes(p.grad for p in params if p.grad is not None),
           "optimizer": nbytes(t for st in optimizer.state.values() for t in st.values()
                               if isinstance(t, torch.Tensor)),
           "activations": sum(saved.values())}
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    optimizer.zero_grad(set_to_none=True)
    return out


def tuning_steps(model, hf, peft, w: Workload, rt) -> dict:
    """name → (one training step, its modules, its optimiser, its loss): prefix tuning, full fine-tuning,
    and PEFT's prefix tuning when installed, on the same batch of random tokens."""
    import copy
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (w.tune_batch, w.tune_T), generator=g).to(rt.device)
    y = torch.roll(x, -1, 1)
    frozen = freeze(copy.deepcopy(model)).train()
    prefix = PrefixTuning(model.config, N_PREFIX).to(rt.device)
    full = copy.deepcopy(model).train()
    sides = {"prefix tuning": ([frozen, prefix], make_adamw(prefix, 1e-3, 0.0, device_type=rt.device_type),
                               lambda: frozen(x, y, prefix_kv=prefix(frozen))[1]),
             "full fine-tuning": ([full], make_adamw(full, 1e-3, 0.1, device_type=rt.device_type),
                                  lambda: full(x, y)[1])}
    if peft is not None:
        config = peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=N_PREFIX)
        peft_model = peft.get_peft_model(copy.deepcopy(hf), config).train()
        sides["PEFT prefix tuning"] = ([peft_model], make_adamw(peft_model, 1e-3, 0.0, device_type=rt.device_type),
                                       lambda: peft_model(input_ids=x, labels=x).loss)
    return {name: (optimiser_step(loss_fn, opt, rt), modules, opt, loss_fn)
            for name, (modules, opt, loss_fn) in sides.items()}


def optimiser_step(loss_fn, opt, rt):
    """One tuning step as the scripts take it: the loss under autocast, backward, the optimiser's step.
    What trains is whatever opt holds; sections 2 and 5 time and size this same step."""
    def step():
        with rt.autocast:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def decoding_fns(model, hf, transformers, w: Workload, device: str, dtype: str = "float32") -> tuple[dict, dict]:
    """Batch 1, a 10-slot prefix, an 8-token prompt, greedy until the block is full. Returns (fns, tokens
    each fn makes). Without the cache a step costs a forward pass over the whole context, so it is timed
    as one step at each of uncached_points contexts spread evenly over the run (their mean is the run's
    mean step: the cost grows about linearly with the context)."""
    kv = random_prefix_kv(model.config, N_PREFIX, device, seed=2)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=g).to(device)
    n_new = w.block - N_PREFIX - PROMPT
    contexts = [PROMPT + int((j + 0.5) * n_new / w.uncached_points) for j in range(w.uncached_points)]
    long = torch.randint(0, model.config.vocab_size, (1, w.block), generator=g).to(device)
    fns = {"with the cache": lambda: decoding.generate(model, prompt, n_new, temperature=0, prefix_kv=kv),
           "without the cache": lambda: [model.generate(long[:, :c], 1, temperature=0, prefix_kv=kv)
                                         for c in contexts]}
    tokens = {"with the cache": n_new, "without the cache": len(contexts)}
    if dtype != "float32":   # the weights cast to bf16/fp16 once, not by autocast at every step
        cast = decoding.cast_for_inference(model, dtype)
        fns["with the cache, weights cast once"] = lambda: decoding.generate(cast, prompt, n_new, temperature=0,
                                                                             prefix_kv=kv)
        tokens["with the cache, weights cast once"] = n_new
    if hf is not None:
        mask = torch.ones(1, N_PREFIX + PROMPT, dtype=torch.long, device=device)
        fns["transformers generate"] = lambda: hf.generate(
            prompt, past_key_values=hf_cache(transformers, kv), attention_mask=mask, max_new_tokens=n_new,
            min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        tokens["transformers generate"] = n_new
    return fns, tokens


def serving_fns(model, hf, transformers, w: Workload, device: str) -> dict:
    """16 prefixes of 4..19 slots, each with its own prompt (19..4 tokens): one mixed batch
    (scoring.decode_rows), one row after another, and transformers one row after another."""
    g = torch.Generator().manual_seed(4)
    rows = [(random_prefix_kv(model.config, 4 + i, device, seed=10 + i),
             torch.randint(0, model.config.vocab_size, (19 - i,), generator=g).tolist()) for i in range(N_SERVE)]
    n = w.serve_new

    def hf_one(kv, ids):
        x = torch.tensor([ids], device=device)
        mask = torch.ones(1, kv[0][0].size(2) + len(ids), dtype=torch.long, device=device)
        return hf.generate(x, past_key_values=hf_cache(transformers, kv), attention_mask=mask, max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
    fns = {"one mixed batch": lambda: decode_rows(model, rows, n, None),
           "one after another": lambda: [decode_rows(model, [row], n, None) for row in rows]}
    if hf is not None:
        fns["transformers, one after another"] = lambda: [hf_one(kv, ids) for kv, ids in rows]
    return fns


def top_ops(fn, device: str, n: int = 10) -> str:
    """torch.profiler's table of the n operators with the most time of their own in one call of fn."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=n)


def head_cost(model, w: Workload, rt, rounds: int) -> dict:
    """Seconds of the output head's two matmuls in a tuning step (logits = h·Wᵀ, and the gradient to h),
    with the vocabulary as it is and padded up to a multiple of 64. GPU matmul kernels want dimensions
    that are multiples of 8 or more; GPT-2's 50,257 is odd (nanoGPT pads it to 50,304 for this)."""
    C, V = model.config.n_embd, model.config.vocab_size
    padded = -(-V // 64) * 64
    h = torch.randn(w.tune_batch * w.tune_T, C, device=rt.device, requires_grad=True)
    weights = {"as it is": torch.randn(V, C, device=rt.device) * 0.02,
               "padded": torch.randn(padded, C, device=rt.device) * 0.02}

    def head(W):
        def fn():
            with rt.autocast:
                logits = h @ W.t()                                              # (N, V)
            h.grad = None
            logits.backward(torch.ones_like(logits))                            # dL/dh = g·W
        return fn
    t = race({k: head(W) for k, W in weights.items()}, rounds, rt.device)
    return {**t, "vocab": padded}


def largest_batch(make_step, limit: int = 1024) -> int:
    """The largest batch for which make_step(batch)() runs without running out of GPU memory: doubling
    from 1, then halving the interval. 0 if even one row does not fit. CUDA only."""
    def fits(batch):
        try:
            make_step(batch)()
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
    if not fits(1):
        return 0
    good = 1
    while good * 2 <= limit and fits(good * 2):
        good *= 2
    bad = min(good * 2, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def memory_limits(model, rt, T: int, grad_checkpoint: bool = False) -> dict:
    """Section 5: the largest batch of T-token sequences whose tuning step fits in GPU memory, for prefix
    tuning (frozen base: no weight gradients, no optimiser state for it) and full fine-tuning; with
    grad_checkpoint, each with activation checkpointing."""
    import copy
    import gc

    def stepper(m, prefix, opt):
        def make_step(batch):
            def loss_fn():
                x = torch.randint(0, m.config.vocab_size, (batch, T), device=rt.device)   # (batch, T)
                return m(x, x, prefix_kv=None if prefix is None else prefix(m))[1]
            step = optimiser_step(loss_fn, opt, rt)

            def step_then_free():   # the gradients go before the next size is tried, or they would count
                step()
                opt.zero_grad(set_to_none=True)
            return step_then_free
        return make_step
    out = {}
    frozen = freeze(copy.deepcopy(model)).train()
    frozen.grad_checkpoint = grad_checkpoint
    prefix = PrefixTuning(model.config, N_PREFIX).to(rt.device)
    out["prefix tuning"] = largest_batch(stepper(frozen, prefix, make_adamw(prefix, 1e-3, 0.0, device_type=rt.device_type)))
    del frozen, prefix
    gc.collect()
    full = copy.deepcopy(model).train()
    full.grad_checkpoint = grad_checkpoint
    out["full fine-tuning"] = largest_batch(stepper(full, None, make_adamw(full, 1e-3, 0.1, device_type=rt.device_type)))
    del full
    gc.collect()
    torch.cuda.empty_cache()
    return out


def checkpointing(model, w: Workload, rt, rounds: int, budget_gib: float = 80.0) -> dict:
    """Section 6: activation checkpointing (model.grad_checkpoint, --grad_checkpoint): the tuning step's
    time and what it holds, prefix tuning and full fine-tuning, each with and without it. The sequences
    that fit in budget_gib are estimated from the bytes read off the tensors: (budget - parameters,
    gradients and optimiser state) / (activations per sequence; checkpointed, plus one block's, which the
    backward pass holds while it reruns that block). On a GPU, section 5 measures them."""
    import copy
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (w.tune_batch, w.tune_T), generator=g).to(rt.device)
    y = torch.roll(x, -1, 1)
    frozen, full = freeze(copy.deepcopy(model)).train(), copy.deepcopy(model).train()
    prefix = PrefixTuning(model.config, N_PREFIX).to(rt.device)
    sides = {"prefix tuning": (frozen, [frozen, prefix], make_adamw(prefix, 1e-3, 0.0, device_type=rt.device_type),
                               lambda: frozen(x, y, prefix_kv=prefix(frozen))[1]),
             "full fine-tuning": (full, [full], make_adamw(full, 1e-3, 0.1, device_type=rt.device_type),
                                  lambda: full(x, y)[1])}

    def switched(m, on, loss_fn):   # the same step with the model's checkpointing set as asked
        def fn():
            m.grad_checkpoint = on
            return loss_fn()
        return fn
    fns, mem = {}, {}
    for name, (m, modules, opt, loss_fn) in sides.items():
        for on in (False, True):
            key = name + (", checkpointed" if on else "")
            fns[key] = optimiser_step(switched(m, on, loss_fn), opt, rt)
            with rt.autocast:
                mem[key] = memory_bytes(modules, opt, switched(m, on, loss_fn), rt.device)
    t = race(fns, rounds, rt.device)
    out = {}
    for key, m in mem.items():
        fixed = m["params"] + m["grads"] + m["optimizer"]
        held = m["activations"]
        if key.endswith("checkpointed"):   # the backward reruns one block at a time: its activations too
            held += mem[key.split(",")[0]]["activations"] / model.config.n_layer
        fits = int((budget_gib * 2 ** 30 - fixed) // max(held / w.tune_batch, 1))
        out[key] = {"s": t[key], **m, "fits_estimate": fits}
    return out


def mib(b: float) -> str:
    return f"{b / 2 ** 20:9.2f}"


def bench_size(size: str, cfg: BenchConfig, rt, transformers, peft) -> dict:
    w = (QUICK if cfg.quick else GPU_WORKLOADS if rt.device.startswith("cuda") else WORKLOADS)[size]
    rounds = 1 if cfg.quick else (cfg.rounds if size == "toy" else max(2, cfg.rounds // 2))
    model, hf = build_models(size, w.block, rt.device, transformers)
    c = model.config
    print(f"\n=== {size}: {c.n_layer} layers x {c.n_head} heads x {c.n_embd}, vocab {c.vocab_size}, "
          f"{model.num_params() / 1e6:.1f}M parameters | {rt.device}, {rt.dtype} | {rounds} round(s) ===")
    res = {}

    steps = tuning_steps(model, hf, peft, w, rt)
    t = race({k: v[0] for k, v in steps.items()}, rounds, rt.device)
    print(f"\n1. one tuning step, batch {w.tune_batch} x {w.tune_T} tokens, P={N_PREFIX} "
          f"(memory in MiB; activations = tensors saved for the backward)")
    print(f"{'':20} {'ms':>9} {'params':>9} {'grads':>9} {'optimizer':>9} {'activations':>11}"
          + (f" {'GPU peak':>9}" if rt.device.startswith("cuda") else ""))
    for name, (step, modules, opt, loss_fn) in steps.items():
        with rt.autocast:
            m = memory_bytes(modules, opt, loss_fn, rt.device)
        print(f"{name:20} {1000 * t[name]:9.1f} {mib(m['params'])} {mib(m['grads'])} {mib(m['optimizer'])} "
              f"{mib(m['activations']):>11}" + (f" {mib(m['cuda_peak'])}" if "cuda_peak" in m else ""))
        res[f"tune/{name}"] = {"s": t[name], **m}
    print(f"prefix tuning / full fine-tuning: x{t['prefix tuning'] / t['full fine-tuning']:.3f} (goal <= 0.70)")
    if "PEFT prefix tuning" in t:
        print(f"prefix tuning / PEFT prefix tuning: x{t['prefix tuning'] / t['PEFT prefix tuning']:.3f} (goal <= 0.75)")

    fns, tokens = decoding_fns(model, hf, transformers, w, rt.device, rt.dtype)
    with rt.autocast:
        t = race(fns, rounds, rt.device)
    rate = {k: tokens[k] / t[k] for k in fns}
    print(f"\n2. greedy decoding, batch 1, P={N_PREFIX}, {PROMPT}-token prompt until block {w.block} is full "
          f"(without the cache: one step timed at {w.uncached_points} contexts spread over the run)")
    for k, r in rate.items():
        print(f"{k:30} {r:10.1f} tokens/s")
    print(f"with the cache / without it: x{rate['with the cache'] / rate['without the cache']:.2f} (goal >= 10)")
    if "transformers generate" in rate:
        print(f"with the cache / transformers generate: x{rate['with the cache'] / rate['transformers generate']:.2f} "
              "(goal >= 2.5)")
    if "with the cache, weights cast once" in rate:
        print(f"weights cast once / cast by autocast every step: "
              f"x{rate['with the cache, weights cast once'] / rate['with the cache']:.2f}")
        if "transformers generate" in rate:
            print(f"weights cast once / transformers generate: "
                  f"x{rate['with the cache, weights cast once'] / rate['transformers generate']:.2f} (goal >= 2.5)")
    res["decode"] = rate

    fns = serving_fns(model, hf, transformers, w, rt.device)
    with rt.autocast:
        t = race(fns, rounds, rt.device)
    rate = {k: N_SERVE * w.serve_new / t[k] for k in fns}
    print(f"\n3. {N_SERVE} prefixes of 4..19 slots, {N_SERVE} prompts of 19..4 tokens, {w.serve_new} new tokens each "
          "(PEFT cannot batch different prefixes, its issue #759: transformers is shown one row after another)")
    for k, r in rate.items():
        print(f"{k:32} {r:10.1f} tokens/s")
    print(f"one mixed batch / one after another: x{rate['one mixed batch'] / rate['one after another']:.2f} (goal >= 10)")
    if "transformers, one after another" in rate:
        print(f"one mixed batch / transformers one after another: "
              f"x{rate['one mixed batch'] / rate['transformers, one after another']:.2f}")
    res["serve"] = rate

    print("\n4. where the time goes: one prefix-tuning step")
    print(top_ops(steps["prefix tuning"][0], rt.device))
    kv = random_prefix_kv(c, N_PREFIX, rt.device, seed=2)
    cache = decoding.KVCache(c, 1, N_PREFIX + PROMPT + 1, kv)
    with torch.inference_mode(), rt.autocast:
        decoding.step(model, torch.zeros(1, PROMPT, dtype=torch.long, device=rt.device), cache)
        print(f"one decoding step, batch 1, with the cache after {N_PREFIX + PROMPT} slots")
        print(top_ops(lambda: decoding.step(model, torch.zeros(1, 1, dtype=torch.long, device=rt.device), cache), rt.device))
    if c.vocab_size % 64:
        head = head_cost(model, w, rt, rounds)
        print(f"the output head alone (logits and their input gradient, {w.tune_batch * w.tune_T} positions): "
              f"vocab {c.vocab_size} {1000 * head['as it is']:.2f} ms, padded to {head['vocab']} "
              f"{1000 * head['padded']:.2f} ms (x{head['padded'] / head['as it is']:.2f})")
        res["head"] = head
    if rt.device.startswith("cuda") and size == "gpt2":   # GPT-2 small's memory limit (goal 6)
        T = w.block - N_PREFIX
        limits = memory_limits(model, rt, T)
        total = torch.cuda.get_device_properties(rt.device).total_memory
        print(f"\n5. the largest batch of {T}-token sequences one tuning step fits in {total / 2 ** 30:.0f} GiB "
              f"of GPU memory ({rt.dtype} autocast, AdamW)")
        for k, b in limits.items():
            print(f"{k:20} {b:6d} sequences")
        if limits["full fine-tuning"]:
            print(f"prefix tuning / full fine-tuning: x{limits['prefix tuning'] / limits['full fine-tuning']:.2f}")
        res["largest_batch"] = limits
        limits = memory_limits(model, rt, T, grad_checkpoint=True)
        print("the same, with activation checkpointing (--grad_checkpoint)")
        for k, b in limits.items():
            print(f"{k:20} {b:6d} sequences")
        if limits["full fine-tuning"]:
            print(f"prefix tuning / full fine-tuning, both checkpointed: "
                  f"x{limits['prefix tuning'] / limits['full fine-tuning']:.2f}")
        if res["largest_batch"]["full fine-tuning"]:
            print(f"prefix tuning checkpointed / full fine-tuning as it is: "
                  f"x{limits['prefix tuning'] / res['largest_batch']['full fine-tuning']:.2f} (goal >= 2)")
        res["largest_batch_checkpointed"] = limits

    ck = checkpointing(model, w, rt, rounds)
    print(f"\n6. activation checkpointing: one tuning step, batch {w.tune_batch} x {w.tune_T} tokens (MiB; "
          f"'fit in 80 GiB' estimated from the bytes above, sequences of {w.tune_T} tokens)")
    print(f"{'':34} {'ms':>9} {'params+grads+optimizer':>22} {'activations':>11} {'fit in 80 GiB':>13}")
    for key, r in ck.items():
        print(f"{key:34} {1000 * r['s']:9.1f} {mib(r['params'] + r['grads'] + r['optimizer']):>22} "
              f"{mib(r['activations']):>11} {r['fits_estimate']:13d}")
    p, f = ck["prefix tuning, checkpointed"], ck["full fine-tuning"]
    print(f"checkpointing's time: prefix x{p['s'] / ck['prefix tuning']['s']:.2f}, full fine-tuning "
          f"x{ck['full fine-tuning, checkpointed']['s'] / f['s']:.2f} | sequences that fit, prefix checkpointed / "
          f"full fine-tuning: x{p['fits_estimate'] / max(f['fits_estimate'], 1):.2f}, / full fine-tuning "
          f"checkpointed: x{p['fits_estimate'] / max(ck['full fine-tuning, checkpointed']['fits_estimate'], 1):.2f}")
    res["checkpointing"] = ck
    return res


def prefix_suite(cfg: BenchConfig) -> dict:
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    transformers, peft = optional_hf()
    t0 = time.perf_counter()
    peak = matmul_peak(rt.device, n=1024 if cfg.quick else 2048)
    print(f"fp32 matmul peak of this machine: {peak / 1e9:.1f} GFLOP/s | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads" + (" | --quick: tiny settings, the numbers mean nothing" if cfg.quick else ""))
    sizes = ["toy", "gpt2"] if cfg.size == "both" else [cfg.size]
    results = {"matmul_peak": peak}
    for size in sizes:
        results[size] = bench_size(size, cfg, rt, transformers, peft)
    print(f"\n--suite=prefix took {time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main_guard(main)
