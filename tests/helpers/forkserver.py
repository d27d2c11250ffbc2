"""A fork server for the CLI tests: each command is a process of its own, without the imports.

``python -m mlxhydra`` spends about 2.6 of its 3.5 CPU seconds importing Hydra, MLX, mlx-lm and
transformers. This server imports them once; every command the tests run is then a fork of it
that executes ``python -m MODULE ARGS`` the way the interpreter does (``runpy``, ``sys.argv``,
``sys.path[0]`` = the working directory), in its own working directory and environment, with its
own stdout, stderr and exit status. The command's code is the real one and runs in a process
of its own, so exits, atexit handlers, threads and signals behave as in a fresh interpreter.

What a fork cannot reproduce is refused, and the caller (tests/conftest.py ``run_cli``) then
starts a fresh interpreter: an environment that differs in a variable read at import time (any
variable outside ``RUNTIME_ENV``; tests/conftest.py starts a server per such environment), a
start-up option that watches the imports (``FRESH_ONLY_ENV``, e.g. PYTHONPROFILEIMPORTTIME), and
a working directory holding a module that shadows one already imported (``python -m`` puts the
working directory first on ``sys.path``).

Protocol, over a Unix socket, one connection per command, JSON lines:
client → ``{"module", "args", "cwd", "env", "stdout", "stderr"}`` (stdout/stderr: file paths);
server → ``{"pid": N}`` or ``{"fallback": reason}``; later ``{"returncode": N, "cpu_s": S}``
(negative: the signal that ended it, as subprocess reports it; S: the command's CPU seconds).
"""

import importlib
import json
import os
import random
import runpy
import selectors
import socket
import sys
import warnings

# Read when a command runs, not when a module is imported: a request may differ from the
# server's environment in these only.
RUNTIME_ENV = ("HYDRA_FULL_ERROR", "COMP_LINE", "COMP_POINT", "MLXHYDRA_", "MLFLOW_")

# Interpreter start-up options that watch the imports: a fork has done them already.
FRESH_ONLY_ENV = ("PYTHONPROFILEIMPORTTIME", "PYTHONVERBOSE", "PYTHONTRACEMALLOC", "PYTHONDEVMODE",
                  "PYTHONWARNINGS", "PYTHONSTARTUP", "PYTHONINSPECT")

PRELOAD = ("mlxhydra.cli", "mlxhydra.command", "mlxhydra.job.pipeline", "mlx_lm.utils",
           "mlx_lm.generate")
# Imported after Hydra's plugin scan, as a run imports them (the scan executes the modules of
# Hydra's core plugins again: a subclass of the earlier BasicSweeper would fail). What the first
# run of a process imports besides: 0.25 CPU seconds a command.
AFTER_PLUGINS = ("mlxhydra.load.loader", "mlxhydra.tasks.load_only", "mlxhydra.sweeps.policy",
                 "mlxhydra.sweeps.sweeper", "mlxhydra.sweeps.job_progress",
                 "mlxhydra.record.fresh_dirs", "mlxhydra.job.log_filters", "mlx_lm.models.llama",
                 "numpy.random", "hydra._internal.logging_config")


def runtime_only(name: str) -> bool:
    return name.startswith(RUNTIME_ENV)


def needs_fresh_interpreter(env: dict) -> list:
    """The start-up options in ``env`` that only a fresh interpreter honours."""
    return [name for name in FRESH_ONLY_ENV if env.get(name)]


def env_differences(request_env: dict, server_env: dict) -> list:
    """The variables, read at import time, in which a request's environment differs."""
    names = set(request_env) | set(server_env)
    return sorted(n for n in names if request_env.get(n) != server_env.get(n) and not runtime_only(n))


def discover_plugins() -> None:
    """Import Hydra's plugins once, as the first run of a process does (Plugins is a singleton)."""
    from hydra.core.plugins import Plugins

    Plugins.instance()


def shadowing(cwd: str) -> list:
    """Entries of cwd that would shadow a module this server has imported, or add to a namespace
    package it has scanned (``hydra_plugins/``: Hydra would discover plugins there)."""
    try:
        entries = os.listdir(cwd)
    except OSError:
        return []
    loaded = {name.partition(".")[0] for name in sys.modules}
    modules = set()
    for entry in entries:
        if entry.endswith((".py", ".pyc", ".so")):
            modules.add(entry.partition(".")[0])
        elif os.path.exists(os.path.join(cwd, entry, "__init__.py")):
            modules.add(entry)
        elif os.path.isdir(os.path.join(cwd, entry)) and entry in sys.modules and getattr(
                sys.modules[entry], "__file__", None) is None:
            modules.add(entry)  # a portion of a namespace package the server has imported
    return sorted(modules & loaded)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the client gave up (timeout, interrupted test)
        pass


def _read_request(conn: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("client closed before sending a request")
        data += chunk
    return json.loads(data)


def serve(path: str) -> dict:
    """Serve until the parent closes our stdin and the commands running then have ended;
    returns only in a forked child, its request."""
    server_env = dict(os.environ)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                if not os.read(sys.stdin.fileno(), 1):  # told to stop: once its commands ended
                    selector.unregister(sys.stdin)
                    selector.unregister(server)
                    server.close()
            elif key.data == "accept":
                conn, _ = server.accept()
                request = _read_request(conn)
                refused = (needs_fresh_interpreter(request["env"])
                           or env_differences(request["env"], server_env) or shadowing(request["cwd"]))
                if refused:
                    _send(conn, {"fallback": refused})
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    server.close()
                    conn.close()
                    return request
                _send(conn, {"pid": pid})
                pidfd = os.pidfd_open(pid)
                selector.register(pidfd, selectors.EVENT_READ, (pid, conn))
            else:
                pid, conn = key.data
                _, status, usage = os.wait4(pid, 0)
                selector.unregister(key.fileobj)
                os.close(key.fd)
                _send(conn, {"returncode": os.waitstatus_to_exitcode(status),
                             "cpu_s": usage.ru_utime + usage.ru_stime})
                conn.close()
        if not selector.get_map():  # stopped, and no command left running
            sys.exit(0)


def become(request: dict) -> None:
    """In the forked child: turn into ``python -m MODULE ARGS`` in the request's cwd and env."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # A fresh interpreter draws new random state; a fork would share the server's.
    random.seed()
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    if "mlx.core" in sys.modules:
        sys.modules["mlx.core"].random.seed(int.from_bytes(os.urandom(4), "little"))
    sys.path[0] = os.getcwd()
    sys.argv = [request["module"], *request["args"]]
    sys.orig_argv = [sys.executable, "-m", request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Python 3.12 warns that fork() in a process with threads may deadlock: the only other
    # thread here is MLX's, which the child never needs from the parent.
    fresh_filters = list(warnings.filters)
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
    for module in PRELOAD:
        importlib.import_module(module)
    discover_plugins()
    for module in AFTER_PLUGINS:
        importlib.import_module(module)
    request = serve(sys.argv[1])
    warnings.filters[:] = fresh_filters
    become(request)
