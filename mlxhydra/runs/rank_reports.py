"""How the other ranks of a distributed run tell rank 0 why they stopped.

When a rank fails or is interrupted, the others only see their next
collective operation fail ("connection to a peer was lost"). So that rank 0
records the real cause once, each other rank sends it one JSON line over TCP
before it exits: rank 0 listens on the address it already uses for MLX
(its ring address, or the jaccl/NCCL coordinator's), on a port it picks and
shares with the other ranks when the run starts. Under MPI, whose hosts MLX
does not name, there is no channel and rank 0 records the lost connection.
"""

import json
import logging
import socket
import threading
from typing import Any, Dict, List, Optional

log = logging.getLogger("mlxhydra")

CONNECT_TIMEOUT = 3.0
MAX_REPORT_BYTES = 1 << 16


class RankReports:
    """Rank 0: a listener that keeps the reports it receives. Other ranks: a sender."""

    def __init__(self, group: Any, host: Optional[str]):
        """Open the channel; a collective call, made by every rank at the same point.

        Args:
            group: The ``mx.distributed`` group.
            host: Rank 0's address as the other ranks reach it, or None for no channel.
        """
        import mlx.core as mx

        self.rank = group.rank()
        self.host = host
        self.reports: List[Dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._server: Optional[socket.socket] = None
        port = 0
        if self.rank == 0 and host is not None:
            try:
                self._server = socket.create_server((host, 0))
                port = self._server.getsockname()[1]
                threading.Thread(target=self._serve, name="mlxhydra-rank-reports", daemon=True).start()
            except OSError as e:  # records lose the other ranks' causes, nothing else
                log.warning("rank reports: cannot listen on %s: %s", host, e)
        shared = mx.distributed.all_sum(mx.array([port], dtype=mx.int32), group=group, stream=mx.cpu)
        self.port = int(shared.item())

    def _serve(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(CONNECT_TIMEOUT)
                data = b""
                try:
                    while b"\n" not in data and len(data) < MAX_REPORT_BYTES:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    report = json.loads(data.decode("utf-8"))
                except (OSError, ValueError):
                    continue
            if isinstance(report, dict):
                with self._arrived:
                    self.reports.append(report)
                    self._arrived.notify_all()

    def send(self, report: Dict[str, Any]) -> None:
        """Send one report to rank 0 (from another rank); silently gives up when it is gone."""
        if self.rank == 0 or not self.port or self.host is None:
            return
        line = json.dumps({**report, "rank": self.rank}, default=str).encode("utf-8") + b"\n"
        try:
            with socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT) as s:
                s.sendall(line[:MAX_REPORT_BYTES])
        except OSError:
            pass

    def first(self, timeout: float) -> Optional[Dict[str, Any]]:
        """The first report received, waiting up to ``timeout`` seconds for one (rank 0)."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.reports), timeout=timeout)
            return self.reports[0] if self.reports else None
