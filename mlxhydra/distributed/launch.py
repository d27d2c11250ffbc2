"""``mlxhydra launch -n N OVERRIDES...``: N ranks on this machine, with MLX's own launcher.

The shortcut for a local test of a distributed run: it runs

    mlx.launch -n N --backend ring --starting-port PORT -- python -m mlxhydra OVERRIDES...

with a free port, and exits with the ranks' status (mlx.launch itself exits 0
even when a rank fails): 0 when every rank completed, else rank 0's code, or
the first other rank's. On several machines, use ``mlx.launch --hostfile``
directly (docs/distributed.md).
"""

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, MutableMapping, Optional, Sequence

STATUS_DIR_ENV = "MLXHYDRA_RANK_STATUS_DIR"  # where each rank leaves its exit code
USER_TMPDIR_ENV = "MLXHYDRA_USER_TMPDIR"  # the user's TMPDIR for the ranks ("" when it was unset)


def local_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ranks_problem(ranks: int) -> Optional[str]:
    """Why ``-n ranks`` cannot run on this machine, or None.

    Every rank runs here (the ring over 127.0.0.1 is one host), each a process
    with its own threads: more ranks than cores only oversubscribe them, and
    hundreds exhaust the threads the system gives a user.
    """
    if ranks < 1:
        return f"-n {ranks}: expected at least 1 rank"
    cores = local_cores()
    if ranks > cores:
        return (f"-n {ranks}: every rank runs on this machine (one host, 127.0.0.1), which has "
                f"{cores} core{'s' if cores != 1 else ''} for this process; expected at most "
                f"{cores} rank{'s' if cores != 1 else ''} (on several machines use mlx.launch --hostfile)")
    return None


def find_mlx_launch() -> Optional[str]:
    """The ``mlx.launch`` script of this Python's environment (or on PATH)."""
    beside = Path(sys.executable).parent / "mlx.launch"
    return str(beside) if beside.is_file() else shutil.which("mlx.launch")


def free_ports(count: int, host: str = "127.0.0.1", tries: int = 20) -> int:
    """A port P such that P .. P+count-1 are free now (the ring backend takes one per rank)."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((host, 0))
            start = s.getsockname()[1]
        if start + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(start, start + count):
                    s = stack.enter_context(socket.socket())
                    s.bind((host, port))
            except OSError:
                continue
        return start
    raise OSError(f"no {count} consecutive free ports on {host}")


@contextlib.contextmanager
def exit_status_kept() -> Iterator[None]:
    """Leave this rank's exit code in ``$MLXHYDRA_RANK_STATUS_DIR/<rank>`` (set by ``launch``)."""
    directory = os.environ.get(STATUS_DIR_ENV)
    code: object = 1
    try:
        yield
        code = 0
    except SystemExit as e:
        code = e.code
        raise
    finally:
        rank = os.environ.get("MLXHYDRA_RANK", os.environ.get("MLX_RANK"))
        if directory and rank is not None:
            value = code if isinstance(code, int) else (0 if code is None else 1)
            with contextlib.suppress(OSError):
                (Path(directory) / rank).write_text(str(value))


def restore_user_tmpdir(environ: MutableMapping[str, str] = os.environ) -> None:
    """In a rank started by ``mlxhydra launch``: the user's TMPDIR again.

    ``launch`` points TMPDIR at its own temporary directory for mlx.launch's
    files only. The ranks' temporary files go where the user's do: MLX keeps
    the CPU kernels it compiles under TMPDIR for the next runs, and a compiler
    still running when a rank ends must not write into the removed directory.
    """
    if USER_TMPDIR_ENV not in environ:
        return
    value = environ.pop(USER_TMPDIR_ENV)
    if value:
        environ["TMPDIR"] = value
    else:
        environ.pop("TMPDIR", None)
    tempfile.tempdir = None  # chosen again from the restored value


def combined_status(directory: Path, ranks: int) -> int:
    """The command's exit code from the ranks' codes (a rank without one was killed)."""
    codes = []
    for rank in range(ranks):
        try:
            codes.append(int((Path(directory) / str(rank)).read_text()))
        except (OSError, ValueError):
            sys.stderr.write(f"mlxhydra launch: rank {rank} ended without an exit status (killed?)\n")
            codes.append(1)
    return codes[0] or next((c for c in codes if c), 0)


def parse(argv: Sequence[str]):
    parser = argparse.ArgumentParser(
        prog="mlxhydra launch",
        description="Run `python -m mlxhydra OVERRIDES...` as N ranks on this machine with "
                    "mlx.launch (ring backend over 127.0.0.1).",
        epilog="Example: mlxhydra launch -n 2 model=./llama load.shard=tensor task=generate",
    )
    parser.add_argument("-n", "--ranks", type=int, default=2, help="number of ranks (default 2)")
    parser.add_argument("--port", type=int, default=None,
                        help="the ring's first port (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="mlx.launch's debug messages")
    return parser.parse_known_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """Run the ranks; return the combined exit code (see the module doc)."""
    args, overrides = parse(argv)
    problem = ranks_problem(args.ranks)
    if problem:
        sys.stderr.write(f"mlxhydra launch: {problem}\n")
        return 2
    launcher = find_mlx_launch()
    if launcher is None:
        sys.stderr.write("mlxhydra launch: mlx.launch not found (it comes with mlx)\n")
        return 1
    port = args.port or free_ports(args.ranks)
    # ignore_cleanup_errors: a process a rank left behind may still write in it; the
    # status is read by then.
    with tempfile.TemporaryDirectory(prefix="mlxhydra-launch-", ignore_cleanup_errors=True) as status_dir:
        command: List[str] = [
            launcher, "-n", str(args.ranks), "--backend", "ring", "--starting-port", str(port),
            *(["--verbose"] if args.verbose else []),
            "--", sys.executable, "-m", "mlxhydra", *overrides,
        ]
        # mlx.launch leaves each rank's hostfile and pid file (mktemp) behind: here they go
        # into this temporary directory, removed at the end. The ranks themselves get the
        # user's TMPDIR back (restore_user_tmpdir).
        env = {**os.environ, STATUS_DIR_ENV: status_dir, "TMPDIR": status_dir,
               USER_TMPDIR_ENV: os.environ.get("TMPDIR", "")}
        proc = subprocess.Popen(command, env=env)
        try:
            proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached every rank too: let them record it
            proc.wait()
        return combined_status(Path(status_dir), args.ranks)
