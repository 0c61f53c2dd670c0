"""Collectives on the right device: a tensor handed to `torch.distributed` must live where the process group's
backend can reduce it (NCCL refuses CPU tensors: "No backend type associated with device type cpu"; gloo takes
CPU tensors). Every reduction the worker does goes through `max_over_ranks`."""

from __future__ import annotations

# A backend's name -> the device type its tensors must be on (torch's own pairing; a "cpu:gloo,cuda:nccl"
# group reduces CUDA tensors with NCCL, so the first match in this order wins).
BACKEND_DEVICE = {"nccl": "cuda", "xccl": "xpu", "hccl": "hpu", "gloo": "cpu", "mpi": "cpu"}


def collective_device():
    """The device this rank's reduction tensors go on: the current CUDA device under NCCL, the CPU under gloo
    (or when no process group is up)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return torch.device("cpu")
    backend = str(dist.get_backend()).lower()
    for name, device_type in BACKEND_DEVICE.items():
        if name in backend:
            if device_type == "cuda":
                return torch.device("cuda", torch.cuda.current_device())
            return torch.device(device_type)
    return torch.device("cpu")


def max_over_ranks(values: list[float]) -> list[float]:
    """The element-wise maximum of `values` over all ranks (the values themselves without a process group)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.cpu().tolist()]
