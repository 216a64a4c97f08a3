"""
distributed.py — data parallel for the scripts that torchrun starts: one process a GPU (or a CPU share),
each computing the gradient of its share of the batch, the shares' gradients averaged before the step.

    torchrun --standalone --nproc_per_node=2 train.py config/...            # nn.parallel.DDP on the model
    torchrun --standalone --nproc_per_node=2 finetune_prefix.py ...         # the trainable tensors only

    par = setup_processes("auto")             # Parallel(rank, world, device); world 1 without torchrun
    x, y = collate(par.share(batch), device)  # rank r takes examples r, r + world, ... of the global batch
    loss = loss * par.token_weight(y)         # so the averaged gradient is the global batch's gradient
    loss.backward()
    par.average_gradients(params)             # one all-reduce of every trainable gradient, then / world

train.py wraps its model in DistributedDataParallel: every parameter trains, and DDP overlaps the
all-reduce with the backward pass. finetune_prefix.py averages by hand (average_gradients), because what
trains is a few tensors beside a frozen model (a prefix is n_layer × 2 × P × C numbers): they are the
only thing that crosses between processes, and the step reads top to bottom with the reduction in it.

Every process runs the same code on the same settings. They stay in lockstep: each decision that ends a
loop (a signal, a NaN, early stopping) is taken on values every rank shares, or the ranks would wait on
one another forever in the next all-reduce.
"""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Parallel:
    """Where this process stands among those torchrun started: rank 0 of 1 without torchrun."""
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:   # the one process that writes files and prints
        return self.rank == 0

    def share(self, batch: list) -> list:
        """This rank's part of a global batch: every world-th example from its rank on. Interleaved, not in
        blocks, because a batch arrives sorted by length (data.tasks.batches) and each share should pad alike."""
        return batch[self.rank::self.world]

    def token_weight(self, y: torch.Tensor) -> torch.Tensor | float:
        """The factor that turns this rank's mean loss into its part of the global batch's mean loss.

        The model's loss is a mean over this rank's n_r target tokens (y != -1); the global batch's loss is
        the mean over all N = Σ n_r of them: L = Σ_r n_r·L_r / N. average_gradients divides the sum of the
        ranks' gradients by world, so each rank's loss is scaled by n_r · world / N. Shares with more target
        tokens count for more, exactly as in one process. 1 without torchrun."""
        if not self.enabled:
            return 1.0
        n = (y != -1).sum().to(torch.float32)                   # this rank's target tokens
        total = n.clone()
        dist.all_reduce(total)                                  # N: the global batch's target tokens
        return n * self.world / total

    def broadcast(self, params):
        """Rank 0's values in every rank: the trainable tensors start equal (a random prefix or LoRA A was
        drawn on each rank), so equal averaged gradients keep them equal step after step."""
        if self.enabled:
            for p in params:
                dist.broadcast(p.data, src=0)

    def average_gradients(self, params, bucket_numel: int = 1 << 24):
        """Replace each gradient by its mean over the ranks. Gradients are packed into flat buckets (at most
        bucket_numel numbers, 64 MB of fp32) so that a method with many tensors (fine-tuning) sends a few
        large messages, not one per tensor."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        start = 0
        while start < len(grads):
            end, size = start, 0
            while end < len(grads) and (end == start or size + grads[end].numel() <= bucket_numel):
                size += grads[end].numel()
                end += 1
            flat = torch.cat([g.reshape(-1) for g in grads[start:end]])     # (size,)
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in grads[start:end]:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            start = end

    @property
    def comm_device(self) -> str:   # where collectives run: the GPU under NCCL, the CPU under Gloo
        return self.device if self.device.startswith("cuda") else "cpu"

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (a loss total and its token count, across the val shards)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, *flags) -> list[bool]:
        """Each flag, true when it is true on any rank: the ranks leave a loop together or not at all."""
        if not self.enabled:
            return [bool(f) for f in flags]
        t = torch.tensor([float(bool(f)) for f in flags], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def max(self, value: int) -> int:
        """The largest value on any rank (the number of a signal, 0 for none)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


def setup_processes(device: str) -> Parallel:
    """Data parallel when torchrun started us (WORLD_SIZE > 1): NCCL on GPUs, Gloo on CPU. Each GPU
    process takes the card of its LOCAL_RANK; without torchrun, rank 0 of 1 on the device given."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel(0, 1, device)
    gpu = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if gpu else "gloo")
    if gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return Parallel(dist.get_rank(), dist.get_world_size(), device)


def agree_to_stop(stop, par: Parallel) -> bool:
    """True when any process got a signal (stop: a runtime.StopOnSignal). Under torchrun the ranks must
    agree: one rank leaving the loop while another waits in the next all-reduce would hang both. Call it
    at log steps only: reading the flag waits for the GPU. A signal that lands after the all-reduce is
    seen at the next call, by every rank at once."""
    agreed = par.max(stop.signal or 0)
    if agreed and stop.signal is None:
        stop.signal = agreed
    return agreed > 0


def quiet_unless_master(par: Parallel):
    """Every rank runs the same prints; only rank 0's reach the terminal (errors still do, on stderr)."""
    if not par.master:
        sys.stdout = open(os.devnull, "w")


def leave(status: int, par: Parallel):
    """End the run. Under torchrun: wait until every rank is done (rank 0 writes the last files), flush,
    and exit at once. Running torch's destructors instead can deadlock: Gloo's process group joins its
    worker thread while holding the GIL, and that thread may still need the GIL to free its last finished
    work item (seen with 2 CPU processes under load). All files are closed by now."""
    if par.enabled:
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    if status:
        raise SystemExit(status)
