"""Where this process sits in a run (torchrun DDP or alone) and how a run is interrupted: SIGTERM, fault drill."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("freshet.train")


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> DistributedEnv:
        """DDP when launched by torchrun (WORLD_SIZE set), a single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            # torchrun's agent keeps one store across restarts; without a per-attempt prefix a
            # restarted rank reads its dead predecessor's gloo address and cannot connect.
            store, _, _ = next(dist.rendezvous("env://"))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    store=dist.PrefixStore(f"/freshet/attempt_{attempt}", store),
                                    rank=rank, world_size=world_size)
        return cls(rank, local_rank, world_size, device)


class StopRequested:
    """SIGTERM (Airflow kill, torchrun restart, pod eviction) asks for a checkpoint, then exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def any_rank(self, environment: DistributedEnv) -> bool:
        if environment.world_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=environment.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def inject_fault_drill(step: int, environment: DistributedEnv) -> None:
    """Fault drill: `FRESHET_FAULT_AT_STEP=N` kills rank `FRESHET_FAULT_RANK` (default 1, else 0)
    at step N on the first attempt only, as a crashed worker would; torchrun's restart resumes."""
    fault_step = os.environ.get("FRESHET_FAULT_AT_STEP")
    if not fault_step or int(fault_step) != step or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    if environment.rank == int(os.environ.get("FRESHET_FAULT_RANK", "1" if environment.world_size > 1 else "0")):
        log.error("fault drill: rank %d exits hard at step %d", environment.rank, step)
        os._exit(17)
