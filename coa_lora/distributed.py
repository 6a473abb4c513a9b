"""Data parallelism across processes started by ``torchrun`` or ``accelerate launch``: the process group and the
few collectives the trainer needs.

    torchrun --nproc_per_node 2 -m coa_lora train --model tiny --out runs/ddp        # gloo on CPU
    torchrun --nproc_per_node 8 -m coa_lora train --device cuda --out runs/ddp       # nccl, one GPU per process

Why plain ``all_reduce`` on flat gradients and not ``DistributedDataParallel``: the trainable state is not one
``nn.Module`` (A and B live in wrappers inside the base model, θ in a separate network whose output U is computed
outside the model's forward), and each step runs k configurations × micro-batches backward passes before ONE
optimiser step. DDP would need a container module, ``no_sync()`` on all but the last backward, and it would
re-broadcast the model's buffers every forward; its one gain, overlapping communication with the backward pass,
only applies to the last of those k passes. One all-reduce per dtype after the local passes sends the same bytes
(a few MB for SmolLM2 at r = 8) and keeps every rank's step explicit and bit-reproducible.

Only rank 0 touches the run folder; what the other ranks need from it (options, configurations, the checkpoint) is
broadcast as tensors, JSON encoded as bytes where it is not a tensor: nothing is pickled, and the other machines of
a multi-node job need no shared filesystem.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Rank 0 runs the probes and the search rounds while the others wait in the next collective; a round on a large
# model can outlast NCCL's default 10-minute timeout, after which the watchdog would abort a healthy job.
TIMEOUT = timedelta(hours=2)


def launched() -> bool:
    """Whether this process is one of several started by torchrun / accelerate launch (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "cpu") -> str:
    """Join the process group the launcher describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    The backend follows the device: nccl for ``cuda`` (each process takes the GPU ``cuda:LOCAL_RANK``), gloo
    otherwise. Returns the device this process should load the model on; one process alone: ``device`` unchanged.
    """
    if not launched() or dist.is_initialized():
        return device
    backend = "gloo"
    if device.startswith("cuda"):
        if device == "cuda":  # one GPU per process of this machine
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)  # nccl's collectives and current() use the current device
        backend = "nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def close() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; ``Ranks()`` is a single process, where every collective is a no-op.

    ``device`` is where collectives run: the process's GPU under nccl, the CPU under gloo.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reads and writes the run folder."""
        return self.rank == 0

    def replicas(self, total: int) -> range:
        """The data-parallel replicas (of ``total`` per step) this rank computes: a contiguous block of
        ``total / world_size``, so ``Ranks().replicas(2)`` is ``range(0, 2)`` and rank 1 of 2 gets ``range(1, 2)``."""
        if total % self.world_size:
            raise ValueError(f"{total} data-parallel replicas cannot be split over {self.world_size} processes; "
                             f"launch a number of processes that divides {total}.")
        per = total // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place: one collective per dtype over the tensors flattened."""
        if self.world_size == 1:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1).to(self.device) for t in group])
            dist.all_reduce(flat)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with rank 0's, in place (shapes and dtypes must already agree)."""
        if self.world_size == 1:
            return
        for t in tensors:
            buf = t.detach().to(self.device)
            dist.broadcast(buf, src=0)
            with torch.no_grad():
                t.copy_(buf)

    def broadcast_json(self, obj=None):
        """Rank 0's ``obj`` (anything JSON can hold) on every rank; the other ranks' argument is ignored."""
        if self.world_size == 1:
            return obj
        data = json.dumps(obj).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if self.is_main
               else torch.empty(int(size), dtype=torch.uint8, device=self.device))
        dist.broadcast(buf, src=0)
        return json.loads(buf.cpu().numpy().tobytes().decode())

    def broadcast_optimizer_(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Give every rank rank 0's optimiser state (after rank 0 loaded a checkpoint); ``params`` in the
        optimiser's order. The parameter groups are not sent: every rank built them from the same options."""
        if self.world_size == 1:
            return
        own = optimizer.state_dict()["state"]
        spec = self.broadcast_json({str(i): {k: _slot_spec(v, params[i]) for k, v in slots.items()}
                                    for i, slots in own.items()} if self.is_main else None)
        state = {}
        for i, slots in spec.items():
            values = own[int(i)] if self.is_main else {k: _slot_empty(s, params[int(i)]) for k, s in slots.items()}
            self.broadcast_([v for v in values.values() if torch.is_tensor(v)])
            state[int(i)] = values
        if not self.is_main:
            optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _slot_spec(value, param: torch.Tensor) -> dict:
    # Slots shaped like their parameter live on its device; the others (AdamW's ``step``) on the CPU, as torch
    # keeps them, whatever the device of rank 0's GPU.
    if not torch.is_tensor(value):
        return {"value": value}
    return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
            "on_param": value.device == param.device}


def _slot_empty(spec: dict, param: torch.Tensor):
    if "value" in spec:
        return spec["value"]
    device = param.device if spec["on_param"] else torch.device("cpu")
    return torch.empty(spec["shape"], dtype=getattr(torch, spec["dtype"]), device=device)


def current() -> Ranks:
    """This process's :class:`Ranks` in the initialised default process group, or ``Ranks()`` without one."""
    if not dist.is_available() or not dist.is_initialized():
        return Ranks()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return Ranks(dist.get_rank(), dist.get_world_size(), device)
