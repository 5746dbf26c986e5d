"""``train.parallel: fsdp``: the student's network sharded with FSDP2 (torch's ``fully_shard``), one unit per block
of the family's network (:meth:`Teacher.network_blocks`) and the network itself as the root unit.

Each rank keeps 1 / world of every parameter, gradient and optimiser state; a unit's full weights exist only
while it runs (and, with ``train.fsdp.reshard_after_forward: false``, until its backward). The frozen base and the
trainable adapter share units: the teacher pass (adapter off) and the student pass gather the same shards. The
frozen rewards stay whole on every rank (each rank scores its own clips; sharding them would add an all-gather of
frozen weights per reward call for memory that the rewards do not dominate).

Why not accelerate's FSDP plugin: accelerate enables FSDP only for accelerator process groups (its state sets
``DistributedType.FSDP`` for multi-GPU / NPU / XPU ..., and a CPU run silently becomes DDP), and it calls the same
``fully_shard`` underneath. Calling ``fully_shard`` directly gives one code path on CPU (gloo) and GPU (nccl).

A fully fine-tuned student (``train.full_finetune``) trains the whole network and runs the teacher's passes on a
frozen copy of it: both are sharded the same way, the copy block by block at the module names of the network's
blocks (:func:`block_names`), resharded after every forward (it has no backward to keep its weights for).

Checkpoints stay world-size independent: the trainable tensors and the optimiser state are gathered to full
tensors (:func:`gather_trainable`, ``get_optimizer_state_dict(full_state_dict=True)``) and written by the main
process as with DDP; a resume scatters them back, under any number of processes.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to its full value (a collective: every rank calls it), a plain tensor as it is."""
    return t.full_tensor() if _is_dtensor(t) else t


def check_fsdp(recipe, device: torch.device) -> None:
    """One-line refusals before anything is sharded."""
    t = recipe.train
    if t.optimizer == "adamw8bit":
        raise ConfigError("train.optimizer adamw8bit cannot step FSDP's sharded (DTensor) parameters here; use "
                          "train.optimizer=adamw (its states are sharded across ranks, 1 / world each) or "
                          "train.parallel=ddp with adamw8bit")
    if t.fsdp.cpu_offload and device.type != "cuda":
        raise ConfigError("train.fsdp.cpu_offload moves GPU shards to CPU memory; this run is on the CPU already: "
                          "set train.fsdp.cpu_offload=false")


def block_names(teacher) -> list[str]:
    """The module names, inside the teacher's network, of :meth:`Teacher.network_blocks` (how a copy of the
    network finds its own blocks)."""
    names = {id(m): n for n, m in teacher.network.named_modules()}
    return [names[id(b)] for b in teacher.network_blocks()]


def shard_network(teacher, recipe, device: torch.device, network: nn.Module | None = None) -> int:
    """``fully_shard`` each block of the teacher's network, then the network; returns the number of units.
    ``network``: a copy of the teacher's network (the frozen teacher of a full fine-tune) to shard instead, its
    blocks found by name and each unit resharded after its forward."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    check_fsdp(recipe, device)
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("train.parallel fsdp needs several processes: run it under torchrun or accelerate launch "
                          "(one process: train.parallel=ddp)")
    net = teacher.network if network is None else network
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    reshard = recipe.train.fsdp.reshard_after_forward or network is not None
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard}
    dtypes = {p.dtype for p in net.parameters()}
    if len(dtypes) > 1:  # a bf16 / fp16 base under fp32 adapters: gather everything in the base's precision
        base = next(p.dtype for p in net.parameters() if not p.requires_grad)
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=base, reduce_dtype=torch.float32)
    if recipe.train.fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    blocks = teacher.network_blocks() if network is None else [net.get_submodule(n) for n in block_names(teacher)]
    # diffusers' blocks return views of their outputs, and FSDP2 warns that an in-place op on one would skip its
    # backward hook; the networks here do none (the sharded run's students equal DDP's: tests/test_fsdp.py)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(net, **options)
    return len(blocks) + 1


def gather_trainable(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of ``net`` whole, on the CPU (a collective under FSDP: every rank calls it)."""
    return {n: full_tensor(p.detach()).cpu() for n, p in net.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into ``net``'s trainable parameters, sharded or not (each rank keeps its shard)."""
    from torch.distributed.tensor import distribute_tensor

    for n, p in net.named_parameters():
        if not p.requires_grad:
            continue
        value = state[n].to(device=p.device if not _is_dtensor(p) else p.to_local().device, dtype=p.dtype)
        if _is_dtensor(p):
            p.copy_(distribute_tensor(value, p.device_mesh, p.placements))
        else:
            p.copy_(value)


def optimizer_state(net: nn.Module, optimizer, sharded: bool) -> dict:
    """The optimiser's state to save: as it is (DDP), or gathered by parameter name (FSDP; a collective)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(net: nn.Module, optimizer, state: dict, sharded: bool) -> None:
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(net, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded or plain gradients; the total norm as a plain tensor."""
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return full_tensor(total)
