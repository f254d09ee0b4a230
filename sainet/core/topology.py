"""This process's place in a torchrun run: the one reader of torchrun's environment.

torchrun (``torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE`` in every process it starts. `TorchrunEnv.from_env` reads them, here and
nowhere else; the trainer (`Topology`), the launcher and the memory plan
(`sainet.train.distributed`), the CLI (rank 0 alone reports) and the thread rule
(`sainet.core.parallel.default_threads`: a rank's share of the cores) take the typed values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from sainet.core.errors import DistributedError

__all__ = ["Topology", "TorchrunEnv"]

_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class TorchrunEnv:
    """torchrun's variables as they are set (None: unset or empty)."""

    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    local_world_size: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TorchrunEnv:
        env = os.environ if env is None else env
        return cls(*(int(env[k]) if env.get(k) else None for k in _NAMES))

    @property
    def started(self) -> bool:
        """This process is a rank torchrun started (it trains as that rank and never spawns others)."""
        return self.rank is not None or self.world_size is not None


@dataclass(frozen=True)
class Topology:
    """This process's place in the run (world_size 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Topology:
        t = TorchrunEnv.from_env(env)
        world = t.world_size or 1
        if world <= 1:
            return cls()
        if t.rank is None:
            raise DistributedError("WORLD_SIZE is set but RANK is not: start sainet with torchrun")
        return cls(t.rank, world, t.local_rank or 0, t.local_world_size or world)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0
