"""Process-group set-up for one learner rank: device, rendezvous address, DeepSpeed import.

DeepSpeed picks its accelerator when it is first imported (``DS_ACCELERATOR``), and
``torch.distributed`` reads the rendezvous from environment variables, so both are set here,
before anything touches DeepSpeed: gloo on CPU, NCCL on CUDA GPUs.

Joining the process group compiles nothing at run time: on CPU, DeepSpeed would build its
shared-memory communication op (a C++ extension) there, which memrl's training never calls
(see :func:`skip_shm_comm_build`).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from types import ModuleType

import torch


def detect_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible to this process, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"


def backend_for(device: str) -> str:
    """The torch.distributed backend for a device kind: NCCL on ``cuda``, gloo on ``cpu``."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected 'cpu' or 'cuda'")
    return "nccl" if device == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port that was free on this host a moment ago (the OS picks it).

    The port is released before it is returned, so another process could take it first; the
    rendezvous then fails with "address already in use" and a retry with a new port fixes it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def node_address() -> str:
    """This host's IP address as other nodes of the Ray cluster see it (loopback outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except ImportError:
        pass
    return "127.0.0.1"


def cuda_device_index() -> int:
    """This process's CUDA device index, from the GPU ids Ray assigned to the actor.

    Ray normally narrows ``CUDA_VISIBLE_DEVICES`` to the assigned ids, so the device is the
    position of the first assigned id in that list (0 for a one-GPU actor); with
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` every GPU stays visible and the id itself is
    the index. Outside Ray (or with no assignment) ``LOCAL_RANK`` decides, default 0.
    """
    assigned: list[str] = []
    try:
        import ray

        if ray.is_initialized():
            assigned = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    except (ImportError, RuntimeError):  # not in a Ray worker
        assigned = []
    if not assigned:
        return int(os.environ.get("LOCAL_RANK", "0"))
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:
        if assigned[0] not in visible:
            raise RuntimeError(
                f"Ray assigned GPU {assigned[0]} but CUDA_VISIBLE_DEVICES={','.join(visible)} "
                "hides it"
            )
        return visible.index(assigned[0])
    return int(assigned[0])


def set_rank_env(
    rank: int, world_size: int, master_addr: str, master_port: int, local_rank: int = 0
) -> None:
    """Write the rendezvous variables torch.distributed reads for one rank.

    ``local_rank`` is a placeholder for Ray actors: :func:`init_distributed` replaces it by
    the device Ray assigned (:func:`cuda_device_index`) before DeepSpeed reads it.
    """
    if world_size < 1:
        raise ValueError(f"world_size = {world_size}: must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank = {rank}: must be in [0, {world_size})")
    if not 0 < master_port < 65536:
        raise ValueError(f"master_port = {master_port}: not a TCP port")
    os.environ.update(
        MASTER_ADDR=str(master_addr),
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
    )


def load_deepspeed(device: str | None = None) -> ModuleType:
    """Import DeepSpeed with its accelerator chosen for ``device`` (default: detected).

    ``DS_ACCELERATOR`` must be set before the first import; a value already in the environment
    wins, so a user can force one.
    """
    os.environ.setdefault("DS_ACCELERATOR", device or detect_device())
    import deepspeed

    return deepspeed


def skip_shm_comm_build(deepspeed: ModuleType) -> None:
    """Mark DeepSpeed's shared-memory CPU communication op unavailable, so that
    ``deepspeed.init_distributed`` does not compile it.

    DeepSpeed's torch backend builds the op on every CPU process-group start
    (``deepspeed.comm.torch.build_shm_op``): a C++ compile into the torch-extensions cache,
    ~85 s on a 2-core machine's first run, behind a ``lock`` file that a build killed midway
    leaves there, so that every later build on that machine waits on it forever. The op serves
    only ``inference_all_reduce`` (DeepSpeed's tensor-parallel inference); training's
    collectives go through torch.distributed (gloo) with or without it. DeepSpeed reads the
    table set here only for this op (0.19); probing the table costs ~0.1 s, and DeepSpeed
    would probe it anyway.
    """
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(device: str, timeout_s: float = 600.0) -> None:
    """Join the process group described by the rank environment (see :func:`set_rank_env`).

    ``timeout_s`` bounds every collective, so a dead peer raises instead of hanging forever.
    Calling it again in a process that already joined is a no-op.
    """
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        if key not in os.environ:
            raise RuntimeError(f"environment variable {key} is not set: call set_rank_env first")
    deepspeed = load_deepspeed(device)
    if device == "cpu":
        skip_shm_comm_build(deepspeed)
    if device == "cuda":
        # DeepSpeed places the engine on cuda:LOCAL_RANK: make both name the assigned GPU.
        index = cuda_device_index()
        os.environ["LOCAL_RANK"] = str(index)
        torch.cuda.set_device(index)
    deepspeed.init_distributed(
        dist_backend=backend_for(device),
        timeout=timedelta(seconds=timeout_s),
        verbose=False,
    )
