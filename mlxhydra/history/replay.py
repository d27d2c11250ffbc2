"""``mlxhydra replay RUN_DIR [OVERRIDE ...]``: re-run a recorded run and check that it reproduces.

The replay is the real ``python -m mlxhydra`` command (started as
:mod:`.rerun` starts it: the installed package, which no working directory can
shadow) run with the recorded task overrides (``.hydra/overrides.yaml``, so the
seed too; a multirun job's own overrides) that :mod:`mlxhydra.config.recorded`
lets through, in the current directory (or ``--cwd DIR``), never the recorded
one. It lands in a NEW Hydra run directory,
``outputs/runs/<date>/<time>_replay-<token>`` there; when that directory is not
the recorded one, a relative ``model=./x`` is rewritten to the recorded
absolute ``model_dir``.

A Hugging Face id the original resolved (``model=org/name``, a draft model, a
KL reference; run.json ``hub``) is pinned to the commit it resolved to
(``model=org/name@COMMIT``), so a branch that moved on since does not change
the replay; the requested revision is then shown but not checked.

Then the original and the replay are compared field by field: status, the
composed config (but ``sweep.*``, the multirun policy), the weights fingerprint,
the quantization summary and the metrics must match exactly (timings and
memory are shown but not checked;
all metrics of non-deterministic tasks such as ``bench`` are shown only);
library versions are shown and a difference is reported but is not a failure.
Exit status: 0 when the replay reproduces the run, 1 when a checked field
differs or the replay failed, 2 for a bad RUN_DIR.
"""

import argparse
import os
import re
import secrets
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config.hub import pinned, split_hub_id
from ..config.model_source import looks_like_path
from ..config.overrides import parse_overrides
from ..config.recorded import consent_resets, dropped_line, hydra_overrides, own_overrides, quoted
from ..errors import RunDirError, one_line_message
from ..file_checks import regular_file_problem
from ..record.run_dir import RunDir, require_run_dir
from ..record.schema import same
from .diff import ABSENT, NEEDED, differences, load_run, table
from .rerun import (
    add_rerun_options,
    installed_command,
    recorded_options_note,
    rerun_cwd,
    rerun_options,
    run_forwarding_signals,
)

# Config keys that do not change a job's results (the multirun policy): shown, not checked.
VOLATILE_CONFIG_KEYS: Tuple[str, ...] = ("sweep.",)
# Metric leaves that measure speed or memory rather than results.
VOLATILE_METRIC = re.compile(r"(seconds|time|tps|per_second|memory|rss|elapsed|latency)", re.I)
# The revision a Hugging Face id was asked at (the resolved commit is checked): a pinned
# replay asks for the commit itself.
REQUESTED_REVISION = re.compile(r"(^|\.)(model_)?hub\.revision$")
# Tasks whose metrics are measurements: shown, never checked.
NONDETERMINISTIC_TASKS = frozenset({"bench"})
# A path that needs no quotes in an override.
PLAIN_PATH = re.compile(r"[\w./+-]+")
# Hydra overrides of the original that the replay replaces with its own (a new run directory).
REPLACED_HYDRA = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.job.id", "hydra.job.num")


def primary_config_options(hc: Dict[str, Any]) -> List[str]:
    """``--config-name``/``--config-dir`` as in the original command, from a recorded ``hydra`` node."""
    job = hc.get("job") if isinstance(hc.get("job"), dict) else {}
    runtime = hc.get("runtime") if isinstance(hc.get("runtime"), dict) else {}
    options = []
    if job.get("config_name") not in (None, "config"):
        options += ["--config-name", str(job["config_name"])]
    for source in runtime.get("config_sources") or []:
        if isinstance(source, dict) and source.get("provider") == "command-line" \
                and source.get("schema") == "file":
            options += ["--config-dir", str(source["path"])]
    return options


def recorded(run_dir: RunDir) -> Dict[str, Any]:
    """The recorded cwd, model_dir, config options, config, Hub ids and overrides of a run (as data).

    Raises:
        RunDirError: a file of the run directory that is damaged or of the wrong shape.
    """
    hc = run_dir.read_hydra()  # plain, unresolved
    record = run_dir.read_record()
    config = run_dir.read_config()
    _mapping(hc, "job", run_dir)
    runtime = _mapping(hc, "runtime", run_dir)
    sources = runtime.get("config_sources") or []
    if not isinstance(sources, list):
        raise RunDirError(f"{run_dir.hydra}: hydra.runtime.config_sources is not a list")
    hydra_overrides = _mapping(hc, "overrides", run_dir).get("hydra") or []
    if not isinstance(hydra_overrides, list) or not all(isinstance(o, str) for o in hydra_overrides):
        raise RunDirError(f"{run_dir.hydra}: hydra.overrides.hydra is not a list of strings")
    cwd = runtime.get("cwd") or record.get("cwd")
    hub = record.get("hub")
    return {
        "cwd": cwd if isinstance(cwd, str) else None,
        "options": primary_config_options(hc),
        # run.json's model_dir is the path as used; config.yaml's is escaped text
        "model_dir": record.get("model_dir") or config.get("model_dir"),
        "task": run_dir.read_overrides(),
        "hub": hub if isinstance(hub, dict) else {},
        "hydra": hydra_overrides,
        "config": config,
    }


def _mapping(node: Dict[str, Any], key: str, run_dir: RunDir) -> Dict[str, Any]:
    value = node.get(key) or {}
    if not isinstance(value, dict):
        raise RunDirError(f"{run_dir.hydra}: hydra.{key} is not a mapping")
    return value


def new_run_dir() -> str:
    """A fresh run directory in Hydra's layout, relative to the replay's cwd."""
    now = datetime.now()
    token = secrets.token_hex(4)
    return f"outputs/runs/{now:%Y-%m-%d}/{now:%H-%M-%S}_replay-{token}"


def _absolute_model(overrides: List[str], model_dir: Optional[str], hub: Dict[str, Any]) -> List[str]:
    """Rewrite a relative ``model=PATH`` override to the recorded absolute model_dir
    (a Hugging Face id, which run.json's ``hub`` names, and a preset name stay)."""
    out = []
    for o in parse_overrides(overrides):
        text = o.text
        if o.key == "model" and model_dir and isinstance(o.value, str) and "model" not in hub \
                and looks_like_path(o.value) and not os.path.isabs(os.path.expanduser(o.value)):
            path = os.path.normpath(model_dir)
            text = f"{o.prefix}model=" + (path if PLAIN_PATH.fullmatch(path) else quoted(path))
        out.append(text)
    return out


def pin_hub_ids(overrides: List[str], hub: Dict[str, Any]) -> List[str]:
    """Rewrite each override naming a resolved Hugging Face id to ``org/name@COMMIT``.

    Args:
        hub: run.json's ``hub``: the setting (``model``, ``task.draft_model``...) -> its resolution.
    """
    out = []
    for o in parse_overrides(overrides):
        text, entry = o.text, hub.get(o.key)
        parts = split_hub_id(o.value) if isinstance(o.value, str) and not o.is_delete else None
        pin = pinned(entry) if parts and isinstance(entry, dict) else None
        if pin and parts[0] == entry["repo_id"]:
            text = f"{o.prefix}{o.key}={pin}"
        out.append(text)
    return out


def replay_command(run_dir: RunDir, extra: Sequence[str] = (), options: Sequence[str] = (),
                   cwd: Optional[Path] = None, out_dir: Optional[str] = None,
                   replaced: Sequence[str] = (), command: str = "replay"
                   ) -> Tuple[List[str], Path, Path, List[str]]:
    """``(argv, cwd, new_run_dir, notes)`` of the replay of ``run_dir``; the first note is the
    one line naming the recorded settings that are not re-applied.

    Args:
        extra: Overrides of the replay command itself, applied last (its consent,
            e.g. ``load.trust_remote_code=true``).
        options: ``--config-dir``/``--config-name`` of the replay command (the
            recorded ones are only named).
        cwd: Where the replay runs (default: the current directory; never the recorded one).
        out_dir: Its run directory (default: a new one, :func:`new_run_dir`).
        replaced: Keys of recorded overrides left out because ``extra`` sets them.
        command: The subcommand its notes name.
    """
    rec = recorded(run_dir)
    cwd = cwd or Path.cwd()
    task = kept = [o.text for o in parse_overrides(rec["task"]) if o.key not in replaced]
    notes: List[str] = []
    if rec["cwd"] and os.path.realpath(rec["cwd"]) != os.path.realpath(cwd):
        task = _absolute_model(task, rec["model_dir"], rec["hub"])
        if task != kept:
            notes.append(f"the run's working directory was {rec['cwd']}: replaying in {cwd} "
                         f"with model={rec['model_dir']}")
    # Hub ids pinned first: a pin is recorded data too, and is filtered like the rest.
    overrides, dropped = own_overrides(pin_hub_ids(task, rec["hub"]), str(cwd))
    kept_hydra, dropped_hydra = hydra_overrides(rec["hydra"], replaced=REPLACED_HYDRA)
    overrides += kept_hydra
    dropped += dropped_hydra + (recorded_options_note(rec["options"]) if not options else [])
    for reset in consent_resets(rec["config"], extra):
        key = reset.split("=", 1)[0]
        overrides.append(reset)
        notes.append(f"the original ran with {key} set; the {command} does not, unless you add "
                     f"{key}=... to the {command} command")
    line = dropped_line(command, dropped)
    out_dir = out_dir or new_run_dir()
    where = out_dir if PLAIN_PATH.fullmatch(out_dir) else quoted(out_dir)
    argv = installed_command(*options, *overrides, *extra, f"hydra.run.dir={where}")
    return argv, cwd, cwd / out_dir, ([line] if line else []) + notes


def compare(original: RunDir, replay: RunDir) -> List[Tuple[str, Any, Any, str]]:
    """``(field, original, replay, match)`` rows; match is ``yes``, ``NO`` or ``differs``.

    ``NO`` marks a checked field that differs; ``differs`` one that is only shown.
    """
    a, b = load_run(original), load_run(replay)
    task = a["config"].get("task.name")
    rows: List[Tuple[str, Any, Any, str]] = []

    def check(field: str, va: Any, vb: Any, checked: bool = True) -> None:
        rows.append((field, va, vb, "yes" if same(va, vb) else ("NO" if checked else "differs")))

    check("status", a["status"][""], b["status"][""])
    config_diffs = differences({"config": a["config"]}, {"config": b["config"]})
    pins = {f"config.{key}": pinned(entry)
            for key, entry in (original.read_record().get("hub") or {}).items()}
    for f, va, vb in config_diffs:
        shown = (f[len("config."):].startswith(VOLATILE_CONFIG_KEYS)
                 or REQUESTED_REVISION.search(f) or (vb is not None and pins.get(f) == vb))
        rows.append((f, va, vb, "differs" if shown else "NO"))
    if not config_diffs:
        rows.append(("config", f"{len(a['config'])} keys", f"{len(b['config'])} keys", "yes"))
    check("weights_fingerprint", a["weights_fingerprint"][""], b["weights_fingerprint"][""])
    for key in ("bits_per_weight", "parameters"):
        check(f"quantization.{key}", a["quantization"].get(key, ABSENT), b["quantization"].get(key, ABSENT))
    for key in sorted(set(a["versions"]) | set(b["versions"])):
        check(f"versions.{key}", a["versions"].get(key, ABSENT), b["versions"].get(key, ABSENT), False)
    ma, mb = a["metrics"], b["metrics"]
    if not ma and not mb:
        rows.append(("metrics", "{}", "{}", "yes"))
    for key in list(ma) + [k for k in mb if k not in ma]:
        checked = (task not in NONDETERMINISTIC_TASKS and not REQUESTED_REVISION.search(key)
                   and not VOLATILE_METRIC.search(key.rsplit(".", 1)[-1]))
        check(f"metrics.{key}", ma.get(key, ABSENT), mb.get(key, ABSENT), checked)
    return rows


INTERRUPTED_EXITS = {128 + s: signal.Signals(s).name for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def main(argv: Sequence[str]) -> int:
    """``mlxhydra replay RUN_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mlxhydra replay",
        description="Re-run a recorded run (its .hydra overrides, in the current directory) into "
                    "a new run directory and check that config, weights, versions and metrics match.",
    )
    parser.add_argument("run_dir", help="a run directory, or a job directory of a multirun sweep")
    parser.add_argument("overrides", nargs="*",
                        help="overrides of this replay, applied last (e.g. load.trust_remote_code=true)")
    add_rerun_options(parser)
    args = parser.parse_args(list(argv))
    try:
        original = require_run_dir(args.run_dir, "replay", NEEDED)
        load_run(original)  # every file compared afterwards is read once now: damage stops here
        command, cwd, out_dir, notes = replay_command(original, args.overrides, rerun_options(args),
                                                      rerun_cwd(args.cwd))
    except (RunDirError, OSError) as e:
        sys.stderr.write(f"mlxhydra: {one_line_message(e)}\n")
        return 2
    except Exception as e:  # a corrupt .hydra file
        sys.stderr.write(f"mlxhydra: replay {args.run_dir}: unreadable run record "
                         f"({one_line_message(e)})\n")
        return 2
    for note in notes:
        sys.stderr.write(f"mlxhydra: {note}\n")
    sys.stderr.write(f"mlxhydra: replaying {original.path}\n  in {cwd}: {' '.join(command[3:])}\n")
    sys.stderr.flush()
    try:
        stdout = sys.stderr.fileno()  # keep stdout for the table
    except (AttributeError, OSError, ValueError):
        stdout = None
    rc = run_forwarding_signals(command, cwd, stdout)
    if rc in INTERRUPTED_EXITS:
        sys.stderr.write(f"mlxhydra: replay interrupted ({INTERRUPTED_EXITS[rc]})\n")
        return rc
    replayed = RunDir(out_dir)
    if regular_file_problem(replayed.overrides):
        sys.stderr.write(f"mlxhydra: replay failed (exit {rc}) before creating its run directory\n")
        return 1
    try:
        rows = compare(original, replayed)
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: the replay's record cannot be read: {e}\n")
        return 1
    print(table(("field", "original", "replay", "match"), rows))
    print(f"\noriginal: {original.path}\nreplay:   {out_dir}")
    failed = [r[0] for r in rows if r[3] == "NO"]
    if rc != 0 and "status" not in failed:
        failed.insert(0, f"exit status {rc}")
    if failed:
        print(f"replay does NOT match: {', '.join(failed)}")
        return 1
    shown = [r[0] for r in rows if r[3] == "differs"]
    print("replay matches" + (f" (not checked, differ: {', '.join(shown)})" if shown else ""))
    return 0
