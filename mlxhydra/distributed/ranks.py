"""The ranks of a distributed run (``mlx.launch … -- python -m mlxhydra …``).

Every rank runs the same job on its part of the model (``load.shard``), with
the same collective calls in the same order. Rank 0 owns the run directory:
it prints, writes run.json (with a ``distributed`` entry: backend, ranks,
hosts, shard mode, each rank's files, bytes read and peak memory) and the
other files. The other ranks write nothing: no run directory, no log file;
they show only warnings and errors, on stderr.

A failure or interruption on any rank ends every rank and is recorded once,
by rank 0, with its cause (see :mod:`.rank_ends`).
"""

import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import RankFailed
from ..record.environment import max_rss_bytes
from .reports import RankReports

# Hydra overrides of ranks other than 0: no run directory, .hydra files or log file.
FOLLOWER_OVERRIDES = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=mlxhydra_rank"]


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    group: Any = None  # mx.distributed.Group
    rank: int = 0
    size: int = 1
    backend: Optional[str] = None
    hosts: Tuple[str, ...] = ()  # each rank's host name
    reports: Optional[RankReports] = None

    @property
    def leads(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_world = World()


def world() -> World:
    """This process's :class:`World` (joined by :func:`join` at the start of the command)."""
    return _world


def ring_hosts(env: Mapping[str, str]) -> List[List[str]]:
    """The ring backend's hostfile (``MLX_HOSTFILE``): each rank's ``ip:port`` list."""
    try:
        with open(env["MLX_HOSTFILE"]) as f:
            text = f.read().strip()
        hosts = json.loads(text) if text else []
    except (KeyError, OSError, ValueError):
        return []
    return hosts if isinstance(hosts, list) else []


def launched_backend(env: Mapping[str, str]) -> Optional[str]:
    """The MLX distributed backend this process was launched for, or None (one process)."""
    if env.get("MLX_JACCL_COORDINATOR"):
        return "jaccl"
    if env.get("NCCL_HOST_IP") and env.get("MLX_WORLD_SIZE", "1") != "1":
        return "nccl"
    if env.get("MLX_HOSTFILE") and len(ring_hosts(env)) > 1:  # mlx.launch -n 1 writes an empty one
        return "ring"
    if int(env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE") or 1) > 1:
        return "mpi"
    return None


def leader_address(backend: str, env: Mapping[str, str]) -> Optional[str]:
    """Rank 0's address as the other ranks reach it (None when the backend does not say)."""
    if backend == "ring":
        first = ring_hosts(env)[0]
        return str(first[0] if isinstance(first, list) else first).rsplit(":", 1)[0]
    if backend == "jaccl":
        return env["MLX_JACCL_COORDINATOR"].rsplit(":", 1)[0]
    if backend == "nccl":
        return env["NCCL_HOST_IP"]
    return None


def settle() -> None:
    """Wait for the work in flight, before a collective call of mlxhydra's own.

    mlx-lm's generation leaves the next step (with the model's collective
    calls) running on its own stream; a collective call on another stream
    meanwhile would interleave with it on the ranks' connections.
    """
    import mlx.core as mx

    mx.synchronize()
    generate = sys.modules.get("mlx_lm.generate")
    if generate is not None and hasattr(generate, "generation_stream"):
        mx.synchronize(generate.generation_stream)


def gather_json(group: Any, value: Any) -> List[Any]:
    """Every rank's ``value`` (JSON-able), in rank order; a collective call."""
    import mlx.core as mx
    import numpy as np

    settle()
    data = json.dumps(value, default=str).encode("utf-8")
    sizes = mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int32), group=group, stream=mx.cpu)
    width = int(mx.max(sizes).item())
    padded = np.frombuffer(data.ljust(width, b" "), dtype=np.uint8).copy()
    gathered = mx.distributed.all_gather(mx.array(padded), group=group, stream=mx.cpu)
    raw = np.array(gathered).tobytes()
    return [json.loads(raw[i * width:(i + 1) * width]) for i in range(group.size())]


def join(env: Mapping[str, str] = os.environ) -> World:
    """Join the ranks when this process was launched as one (a collective call on every rank).

    Raises:
        RankFailed: the backend's group cannot be joined.
    """
    global _world
    backend = launched_backend(env)
    if _world.distributed or backend is None:
        return _world
    import mlx.core as mx

    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except (RuntimeError, ValueError) as e:
        raise RankFailed(f"cannot join the ranks of the {backend} backend: {e}") from e
    if group.size() == 1:
        return _world
    hosts = gather_json(group, socket.gethostname())
    reports = RankReports(group, leader_address(backend, env))
    os.environ["MLXHYDRA_RANK"] = str(group.rank())  # the other ranks' log format names it
    _world = World(group, group.rank(), group.size(), backend, tuple(hosts), reports)
    return _world


def rank0_decides(value: bool) -> bool:
    """Rank 0's ``value`` on every rank, so that all take the same branch (a collective call)."""
    import mlx.core as mx

    w = world()
    if not w.distributed:
        return value
    settle()
    mine = mx.array([int(bool(value)) if w.leads else 0], dtype=mx.int32)
    return bool(mx.distributed.all_sum(mine, group=w.group, stream=mx.cpu).item())


def multirun_refusal(args: List[str]) -> Optional[str]:
    """Why ``args`` cannot run across the ranks, or None."""
    w = world()
    if w.distributed and any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in args):
        return (f"-m/--multirun is not supported across {w.size} ranks: "
                "launch one distributed run per setting")
    return None


def record_entry(shard_requested: Any,
                 ranks: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The run record's ``distributed`` entry (``{}`` in one process)."""
    w = world()
    if not w.distributed:
        return {}
    entry: Dict[str, Any] = {"backend": w.backend, "world_size": w.size, "hosts": list(w.hosts),
                             "shard_requested": shard_requested}
    if ranks is not None:
        entry["shard"] = ranks[0].get("mode")
        entry["ranks"] = ranks
    return {"distributed": entry}


def gather_ranks(sharding: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """Every rank's part, files, bytes read and peak memory, after the task (a collective call).

    Args:
        sharding: This rank's ``LoadReport.sharding``.
    """
    import mlx.core as mx


    w = world()
    if not w.distributed:
        return None
    mine = {"rank": w.rank, "host": w.hosts[w.rank], **sharding,
            "peak_memory_bytes": mx.get_peak_memory(), "max_rss_bytes": max_rss_bytes()}
    return gather_json(w.group, mine)
