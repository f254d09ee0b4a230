"""Distributed training on torch.distributed: one code path for one GPU, several GPUs and several machines.

Every multi-process run is started by torchrun (``torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in each process:

* ``sainet train --device 0,1 ...`` (one machine, several GPUs) spawns
  ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m sainet.train.rank SETTINGS.json``
  itself (`sainet.train.launch`), waits for it and returns the run folder;
* ``torchrun --nnodes N --node-rank R --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT
  -m sainet train ...`` on each machine starts the ranks directly.

A process that finds ``RANK``/``WORLD_SIZE`` in its environment trains as that rank and never spawns.
That environment is read in one place, `sainet.core.topology` (`DistInfo` is its `Topology`).
`SainetTrainer` then creates the process group here (`init_process_group`): gloo with
``--device cpu`` (so the whole path runs in CI), NCCL on CUDA with device = ``LOCAL_RANK``, and a
timeout of ``SAINET_DIST_TIMEOUT`` seconds (default `DEFAULT_TIMEOUT_S`) instead of Ultralytics'
fixed 3 hours.

Faults: when a rank dies, torchrun's agent on that machine stops the machine's other ranks at once
(SIGTERM, then SIGKILL after its grace period) and exits non-zero; ranks on other machines fail in
their next collective — gloo sees the closed connection at once, NCCL's watchdog aborts after the
timeout — so no rank waits longer than the timeout. `sainet.train.launch` runs torchrun in its own
session and kills that whole process group on the way out, so nothing outlives it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sainet.core.errors import DistributedError
from sainet.core.topology import Topology, TorchrunEnv

__all__ = [
    "DEFAULT_TIMEOUT_S", "ENV_TIMEOUT", "DistributedError", "any_rank", "DistInfo", "StoreFingerprint", "check_same_store",
    "broadcast", "cuda_device", "gather", "host_bytes_per_node", "init_process_group",
    "per_rank_batch", "ranks_per_node", "ranks_to_spawn", "shutdown_process_group", "store_fingerprint",
    "timeout_s", "world_size_for",
]

log = logging.getLogger(__name__)

ENV_TIMEOUT = "SAINET_DIST_TIMEOUT"
#: Seconds a collective may wait for the slowest rank before the run fails. Long enough for what
#: rank 0 does alone between two collectives (saving weights, results.csv, plots); short enough
#: that a dead peer on another machine (NCCL) stops the run within minutes, not Ultralytics' 3 h.
DEFAULT_TIMEOUT_S = 600.0


#: This process's place in the run, from torchrun's environment (`sainet.core.topology.Topology`).
DistInfo = Topology


def timeout_s() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{ENV_TIMEOUT}={raw!r}: expected seconds") from None
    if value <= 0:
        raise DistributedError(f"{ENV_TIMEOUT}={raw!r}: expected a positive number of seconds")
    return value


def _devices(device: str | None) -> list[str]:
    d = (device or "").strip().lower().removeprefix("cuda:")
    return [x for x in d.split(",") if x.strip()] if d not in ("", "cpu", "cuda", "mps") else []


def ranks_to_spawn(device: str | None) -> int:
    """How many ranks `launch` should start for `device` here: the number of GPUs in a list such as
    ``0,1`` when this process is not already a rank; 0 otherwise (train in this process)."""
    if TorchrunEnv.from_env().started:
        return 0
    n = len(_devices(device))
    return n if n > 1 else 0


def world_size_for(device: str | None) -> int:
    """Ranks of the whole run: torchrun's WORLD_SIZE, else the GPUs listed in `device` (what `launch` starts)."""
    if (world := TorchrunEnv.from_env().world_size) is not None:
        return max(1, world)
    return max(1, len(_devices(device)))


def ranks_per_node(device: str | None) -> int:
    """Ranks sharing this machine's memory: torchrun's LOCAL_WORLD_SIZE, else the GPUs listed in `device`."""
    if (local := TorchrunEnv.from_env().local_world_size) is not None:
        return max(1, local)
    return max(1, len(_devices(device)))


def host_bytes_per_node(ranks: int, loader_buffer_bytes: int, store_bytes: int, loader: str) -> int:
    """Host memory a run takes on one machine: the loader's buffers once per rank; the store once per
    machine (mapped from the page cache or /dev/shm, shared by its ranks, so not counted here as
    new memory), except for the ``ram`` loader, which copies it into every rank."""
    return ranks * (loader_buffer_bytes + (store_bytes if loader == "ram" else 0))


def cuda_device(device: str | None, info: DistInfo) -> int:
    """The CUDA index this rank uses: the LOCAL_RANK-th entry of a device list such as ``0,1,2,3``
    (one entry per local rank), else LOCAL_RANK itself (``--device 0`` or ``cuda`` under torchrun)."""
    listed = _devices(device)
    if len(listed) > 1:
        if len(listed) != info.local_world_size:
            raise DistributedError(f"--device {device} lists {len(listed)} GPUs but torchrun started "
                                   f"{info.local_world_size} ranks on this machine (--nproc-per-node); make them equal")
        return int(listed[info.local_rank])
    return info.local_rank


def per_rank_batch(batch: int, world_size: int) -> int:
    """`--batch` is the global batch, as in Ultralytics: each rank takes batch / world_size."""
    if batch < world_size or batch % world_size:
        raise DistributedError(f"--batch {batch} is the global batch and must divide evenly over {world_size} ranks "
                               f"(e.g. --batch {max(1, batch // world_size) * world_size} or "
                               f"{(batch // world_size + 1) * world_size})")
    return batch // world_size


def init_process_group(info: DistInfo, cuda_index: int | None) -> str:
    """Create the default process group for this rank; returns the backend (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return str(dist.get_backend())
    backend = "gloo"
    kw: dict[str, Any] = {}
    if cuda_index is not None:
        torch.cuda.set_device(cuda_index)
        backend = "nccl"
        kw["device_id"] = torch.device("cuda", cuda_index)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout_s()), **kw)
    log.info("rank %d/%d (local %d) on %s: %s process group", info.rank, info.world_size, info.local_rank,
             socket.gethostname(), backend)
    return backend


def shutdown_process_group() -> None:
    """Destroy the default process group, if any (also after a failure: no barrier, nothing to wait for)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # noqa: BLE001 - a peer may be gone already; the process is ending anyway
            log.debug("destroy_process_group: %s", e)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank (a list indexed by rank); ``[obj]`` when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (one small all-reduce); `flag` when not distributed."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the process group must be up)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------ store identity
@dataclass(frozen=True)
class StoreFingerprint:
    """What must be equal on every node: format version, record count, and the store's content hash
    (`cache_tools.format.content_fingerprint`: records, checksums, labels, classes, options; not the
    time, path or host of the pack, so nodes that each packed the same source agree)."""

    version: int
    records: int
    digest: str

    def __str__(self) -> str:
        return f"v{self.version}, {self.records} records, content {self.digest[:12]}"


def store_fingerprint(data: str | os.PathLike[str], names: list[str] | None = None) -> StoreFingerprint:
    """The fingerprint of a store (its index file), or for a dataset folder (``--loader disk``) of
    the record names the loader found."""
    from cache_tools.format import content_fingerprint, read_index
    from cache_tools.store import is_store

    if is_store(data):
        ix = read_index(Path(data))  # validates the index (typed error if foreign or damaged)
        return StoreFingerprint(int(ix.version), len(ix.records), content_fingerprint(ix))
    h = hashlib.blake2b(digest_size=16)
    for name in names or []:
        h.update(name.encode() + b"\0")
    return StoreFingerprint(0, len(names or []), h.hexdigest())


def check_same_store(data: str, fingerprint: StoreFingerprint) -> None:
    """All-gather every rank's (host, path, fingerprint); raise on every rank if any differs from rank 0's."""
    mine = (socket.gethostname(), str(Path(data).resolve()), asdict(fingerprint))
    everyone = gather(mine)
    ref_host, ref_path, ref = everyone[0]
    bad = [(r, h, p, f) for r, (h, p, f) in enumerate(everyone) if f != ref]
    if bad:
        lines = "; ".join(f"rank {r} on {h}: {p} ({StoreFingerprint(**f)})" for r, h, p, f in bad)
        raise DistributedError(f"ranks read different stores: rank 0 on {ref_host}: {ref_path} ({StoreFingerprint(**ref)}) "
                               f"but {lines}. Pack the same source with the same options on every node")
