"""Distributed plumbing in one place: process group, FSDP2 sharding, reductions. No-ops on one process."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> Env:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Env(rank, world, local, device)


def shard(model, bf16: bool) -> None:
    """FSDP2: one unit per decoder layer, then the root (embeddings, ViT, heads)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for layer in model.language_model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def all_sum(x: float | torch.Tensor, env: Env) -> float:
    t = torch.as_tensor(x, dtype=torch.float64, device=env.device).clone()
    if env.world > 1:
        dist.all_reduce(t)
    return float(t)


def barrier(env: Env) -> None:
    if env.world > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def full_state(model, optimizer=None) -> tuple:
    """Unsharded model (and optimizer) state dicts on the CPU, valid on every rank's return but only
    complete on rank 0 when sharded."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_optimizer_state(model, optimizer, osd: dict) -> None:
    """Load a full optimizer state dict (present on every rank) into a possibly sharded optimizer.
    (The model's weights come in through ``load_pretrained`` before sharding.)"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
