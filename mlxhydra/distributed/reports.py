"""How the other ranks of a distributed run tell rank 0 why they stopped.

When a rank fails or is interrupted, the others only see their next
collective operation fail ("connection to a peer was lost"). So that rank 0
records the real cause once, each other rank sends it one JSON report over TCP
before it exits: rank 0 listens on the address it already uses for MLX
(its ring address, or the jaccl/NCCL coordinator's), on a port it picks and
shares with the other ranks when the run starts. Under MPI, whose hosts MLX
does not name, there is no channel and rank 0 records the lost connection.

The channel is authenticated: with the port, rank 0 shares a random secret
through MLX's own collective (``all_sum`` at join time, over the ranks'
connections), and both ends prove it with the HMAC challenge-response of
:mod:`multiprocessing.connection` before a report is read. A connection that
does not prove it, sends more than :data:`MAX_REPORT_BYTES` or is not a rank's
report is ignored (named once in the log); rank 0 keeps at most
:data:`MAX_REPORTS` reports and authenticates at most :data:`MAX_PENDING`
connections at once.

A rank that has reported waits for rank 0's acknowledgement (sent once rank 0
has recorded and is about to exit, or implied when rank 0 is gone) before it
exits itself: mlx.launch stops every rank as soon as one exits, and rank 0
must not be stopped before its record is written.
"""

import json
import logging
import os
import socket
import struct
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any, Dict, List, Optional

log = logging.getLogger("mlxhydra")

CONNECT_TIMEOUT = 3.0
ACK_WAIT = 30.0  # seconds a reporting rank waits for rank 0 to record (rank 0 polls every 0.2 s)
MAX_REPORT_BYTES = 1 << 16
MAX_REPORTS = 64  # one per rank is all a run needs
MAX_PENDING = 16  # connections being authenticated at once
SECRET_BYTES = 32
ACK = b"recorded\n"
STATUSES = ("failed", "interrupted")


def _connection(sock: socket.socket, timeout: float) -> Connection:
    """``sock`` as a :class:`~multiprocessing.connection.Connection` whose every read and
    write gives up after ``timeout`` seconds (a peer that stalls holds nothing for ever)."""
    sock.settimeout(None)
    interval = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    return Connection(sock.detach())


def send_report(host: str, port: int, key: bytes, report: Dict[str, Any],
                ack_wait: float = ACK_WAIT) -> bool:
    """Send one report to rank 0, proving ``key``, and wait for its acknowledgement.

    Returns:
        Whether rank 0 acknowledged it (False when it cannot be reached, does not
        prove the key itself, or is gone).
    """
    line = json.dumps(report, default=str).encode("utf-8")
    if len(line) > MAX_REPORT_BYTES:  # an error message that long: its start
        line = json.dumps({**report, "error": str(report.get("error"))[: MAX_REPORT_BYTES // 8]},
                          default=str).encode("utf-8")
    try:
        # Each read may wait as long as the acknowledgement: rank 0 may be busy (or stopped)
        # before it answers the handshake.
        conn = _connection(socket.create_connection((host, port), timeout=CONNECT_TIMEOUT), ack_wait)
        with conn:
            answer_challenge(conn, key)
            deliver_challenge(conn, key)
            conn.send_bytes(line)
            return conn.poll(ack_wait) and conn.recv_bytes(len(ACK)) == ACK
    except (OSError, EOFError, AuthenticationError):
        return False


def _is_report(report: Any, size: int) -> bool:
    """A rank's report: ``{"rank": 1..size-1, "status": failed|interrupted, ...}``."""
    return (isinstance(report, dict) and type(report.get("rank")) is int
            and 0 < report["rank"] < size and report.get("status") in STATUSES
            and type(report.get("signum", 0)) is int)


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
        self.size = group.size()
        self.host = host
        self.reports: List[Dict[str, Any]] = []
        self.ignored = 0  # connections that were not an authenticated report
        self._arrived = threading.Condition()
        self._server: Optional[socket.socket] = None
        self._held: List[Connection] = []  # reporters waiting for the acknowledgement
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        secret = os.urandom(SECRET_BYTES) if self.rank == 0 else bytes(SECRET_BYTES)
        port = 0
        if self.rank == 0 and host is not None:
            try:
                self._server = socket.create_server((host, 0))
                port = self._server.getsockname()[1]
            except OSError as e:  # records lose the other ranks' causes, nothing else
                log.warning("rank reports: cannot listen on %s: %s", host, e)
        # Rank 0's port and secret reach every rank through MLX's own connections.
        shared = mx.distributed.all_sum(mx.array([port, *secret], dtype=mx.int32), group=group,
                                        stream=mx.cpu).tolist()
        self.port = int(shared[0])
        self._key = bytes(int(b) for b in shared[1:])
        if self._server is not None:
            threading.Thread(target=self._serve, name="mlxhydra-rank-reports", daemon=True).start()

    def _serve(self) -> None:
        assert self._server is not None
        while True:
            try:
                sock, address = self._server.accept()
            except OSError:
                return
            if not self._pending.acquire(blocking=False):
                sock.close()
                self._ignore(address, "too many connections at once")
                continue
            threading.Thread(target=self._receive, args=(sock, address), daemon=True).start()

    def _receive(self, sock: socket.socket, address: Any) -> None:
        """Authenticate one connection and keep its report (held for the acknowledgement)."""
        conn: Optional[Connection] = None
        proven = False
        try:
            conn = _connection(sock, CONNECT_TIMEOUT)
            deliver_challenge(conn, self._key)
            answer_challenge(conn, self._key)
            proven = True
            if not conn.poll(CONNECT_TIMEOUT):
                raise EOFError("sent no report")
            report = json.loads(conn.recv_bytes(MAX_REPORT_BYTES).decode("utf-8"))
            if not _is_report(report, self.size):
                raise ValueError("not a rank's report")
        except (OSError, EOFError, ValueError, AuthenticationError) as e:
            (conn or sock).close()
            self._ignore(address, str(e) if proven else "it did not prove the run's secret")
            return
        finally:
            self._pending.release()
        with self._arrived:
            if len(self.reports) >= MAX_REPORTS:
                conn.close()
                return
            self.reports.append(report)
            self._held.append(conn)  # answered by acknowledge()
            self._arrived.notify_all()

    def _ignore(self, address: Any, why: str) -> None:
        with self._arrived:
            self.ignored += 1
            first = self.ignored == 1
        if first:  # named once: a flood of connections does not flood the log
            host = address[0] if isinstance(address, tuple) else address
            log.warning("rank reports: ignored a connection from %s: %s", host, why)

    def send(self, report: Dict[str, Any], ack_wait: float = ACK_WAIT) -> bool:
        """Send one report to rank 0 (from another rank) and wait until rank 0 has recorded.

        The wait ends with rank 0's acknowledgement, when rank 0 is gone, or
        after ``ack_wait`` seconds. Silently gives up when rank 0 cannot be reached.

        Returns:
            Whether rank 0 acknowledged the report.
        """
        if self.rank == 0 or not self.port or self.host is None:
            return False
        return send_report(self.host, self.port, self._key, {**report, "rank": self.rank}, ack_wait)

    def acknowledge(self) -> None:
        """Rank 0, once its record is final: let the ranks that reported exit."""
        with self._arrived:
            held, self._held = self._held, []
        for conn in held:
            try:
                conn.send_bytes(ACK)
            except OSError:
                pass
            finally:
                conn.close()

    def first(self, timeout: float) -> Optional[Dict[str, Any]]:
        """The first report received, waiting up to ``timeout`` seconds for one (rank 0)."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.reports), timeout=timeout)
            return self.reports[0] if self.reports else None
