"""How the other ranks of a distributed run tell rank 0 why they stopped.

When a rank fails or is interrupted, the others only see their next
collective operation fail ("connection to a peer was lost"). So that rank 0
records the real cause once, each other rank sends it one JSON line over TCP
before it exits: rank 0 listens on the address it already uses for MLX
(its ring address, or the jaccl/NCCL coordinator's), on a port it picks and
shares with the other ranks when the run starts. Under MPI, whose hosts MLX
does not name, there is no channel and rank 0 records the lost connection.

A rank that has reported waits for rank 0's acknowledgement (sent once rank 0
has recorded and is about to exit, or implied when rank 0 is gone) before it
exits itself: mlx.launch stops every rank as soon as one exits, and rank 0
must not be stopped before its record is written.
"""

import json
import logging
import socket
import threading
from typing import Any, Dict, List, Optional

log = logging.getLogger("mlxhydra")

CONNECT_TIMEOUT = 3.0
ACK_WAIT = 30.0  # seconds a reporting rank waits for rank 0 to record (rank 0 polls every 0.2 s)
MAX_REPORT_BYTES = 1 << 16
ACK = b"recorded\n"


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
        self._held: List[socket.socket] = []  # reporters waiting for the acknowledgement
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
                conn.close()
                continue
            if not isinstance(report, dict):
                conn.close()
                continue
            with self._arrived:
                self.reports.append(report)
                self._held.append(conn)  # answered by acknowledge()
                self._arrived.notify_all()

    def send(self, report: Dict[str, Any], ack_wait: float = ACK_WAIT) -> bool:
        """Send one report to rank 0 (from another rank) and wait until rank 0 has recorded.

        The wait ends with rank 0's acknowledgement, when rank 0 is gone, or
        after ``ack_wait`` seconds. Silently gives up when rank 0 cannot be reached.

        Returns:
            Whether rank 0 acknowledged the report.
        """
        if self.rank == 0 or not self.port or self.host is None:
            return False
        line = json.dumps({**report, "rank": self.rank}, default=str).encode("utf-8") + b"\n"
        try:
            with socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT) as s:
                s.sendall(line[:MAX_REPORT_BYTES])
                s.settimeout(ack_wait)
                return bool(s.recv(len(ACK)))  # b"" when rank 0 closed without it
        except OSError:
            return False

    def acknowledge(self) -> None:
        """Rank 0, once its record is final: let the ranks that reported exit."""
        with self._arrived:
            held, self._held = self._held, []
        for conn in held:
            try:
                conn.sendall(ACK)
            except OSError:
                pass
            finally:
                conn.close()

    def first(self, timeout: float) -> Optional[Dict[str, Any]]:
        """The first report received, waiting up to ``timeout`` seconds for one (rank 0)."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.reports), timeout=timeout)
            return self.reports[0] if self.reports else None
