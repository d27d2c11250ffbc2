"""``mlxhydra replay RUN_DIR``: re-run a recorded run and check that it reproduces.

The replay is the real ``python -m mlxhydra`` command run with the recorded
task overrides (``.hydra/overrides.yaml``, so the seed too; a multirun job's own
overrides) in the recorded working directory (``hydra.runtime.cwd``), so a
relative ``model=./x`` names the same model. It lands in a NEW Hydra run
directory, ``<recorded cwd>/outputs/runs/<date>/<time>_replay-<token>``; if the
recorded cwd no longer exists it runs in the current directory with the model
override rewritten to the recorded absolute ``model_dir``.

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
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config.hub import pinned, split_hub_id
from ..config.overrides import parse_overrides
from ..errors import RunDirError
from .diff import ABSENT, differences, load_run, table
from .record import same
from .run_dir import RunDir, check_run_dir

# Config keys that do not change a job's results (the multirun policy): shown, not checked.
VOLATILE_CONFIG_KEYS: Tuple[str, ...] = ("sweep.",)
# Metric leaves that measure speed or memory rather than results.
VOLATILE_METRIC = re.compile(r"(seconds|time|tps|per_second|memory|rss|elapsed|latency)", re.I)
# The revision a Hugging Face id was asked at (the resolved commit is checked): a pinned
# replay asks for the commit itself.
REQUESTED_REVISION = re.compile(r"(^|\.)(model_)?hub\.revision$")
# Tasks whose metrics are measurements: shown, never checked.
NONDETERMINISTIC_TASKS = frozenset({"bench"})
# Hydra overrides of the original that must not be carried into a single replay run.
DROPPED_HYDRA = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.sweeper", "hydra.launcher",
                 "hydra/sweeper", "hydra/launcher", "hydra.job.id", "hydra.job.num")


def primary_config_options(hc: Dict[str, Any]) -> List[str]:
    """``--config-name``/``--config-dir`` as in the original command, from a recorded ``hydra`` node."""
    job, runtime = hc.get("job") or {}, hc.get("runtime") or {}
    options = []
    if job.get("config_name") not in (None, "config"):
        options += ["--config-name", job["config_name"]]
    for source in runtime.get("config_sources") or []:
        if source.get("provider") == "command-line" and source.get("schema") == "file":
            options += ["--config-dir", source["path"]]
    return options


def recorded(run_dir: RunDir) -> Dict[str, Any]:
    """The recorded cwd, model_dir, config options, hydra overrides and task overrides of a run."""
    hc = run_dir.read_hydra()  # plain, unresolved
    record = run_dir.read_record()
    config = run_dir.read_config()
    runtime = hc.get("runtime") or {}
    return {
        "cwd": runtime.get("cwd") or record.get("cwd"),
        "options": primary_config_options(hc),
        "model_dir": config.get("model_dir") or record.get("model_dir"),
        "task": run_dir.read_overrides(),
        "hub": record.get("hub") or {},
        "hydra": [o for o in (hc.get("overrides") or {}).get("hydra") or []
                  if not o.lstrip("+~").startswith(DROPPED_HYDRA)],
    }


def new_run_dir() -> str:
    """A fresh run directory in Hydra's layout, relative to the replay's cwd."""
    now = datetime.now()
    token = secrets.token_hex(4)
    return f"outputs/runs/{now:%Y-%m-%d}/{now:%H-%M-%S}_replay-{token}"


def _absolute_model(overrides: List[str], model_dir: Optional[str]) -> List[str]:
    """Rewrite a relative ``model=PATH`` override to the recorded absolute model_dir."""
    out = []
    for o in parse_overrides(overrides):
        text = o.text
        if o.key == "model" and model_dir and isinstance(o.value, str) and not os.path.isabs(o.value):
            text = f"{o.prefix}model={model_dir}"
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


def replay_command(run_dir: RunDir) -> Tuple[List[str], Path, Path, List[str]]:
    """``(argv, cwd, new_run_dir, notes)`` of the replay of ``run_dir``."""
    rec = recorded(run_dir)
    notes = []
    overrides = pin_hub_ids(rec["task"], rec["hub"])
    if rec["cwd"] and Path(rec["cwd"]).is_dir():
        cwd = Path(rec["cwd"])
    else:
        cwd = Path.cwd()
        overrides = _absolute_model(overrides, rec["model_dir"])
        notes.append(f"recorded cwd {rec['cwd']} is gone: replaying in {cwd} "
                     f"with model={rec['model_dir']}")
    out_dir = new_run_dir()
    argv = [sys.executable, "-m", "mlxhydra", *rec["options"], *overrides, *rec["hydra"],
            f"hydra.run.dir={out_dir}"]
    return argv, cwd, cwd / out_dir, notes


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


def main(argv: Sequence[str]) -> int:
    """``mlxhydra replay RUN_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mlxhydra replay",
        description="Re-run a recorded run (its .hydra overrides, in its recorded cwd) into a "
                    "new run directory and check that config, weights, versions and metrics match.",
    )
    parser.add_argument("run_dir", help="a run directory, or a job directory of a multirun sweep")
    args = parser.parse_args(list(argv))
    try:
        original = check_run_dir(args.run_dir, "replay")
        command, cwd, out_dir, notes = replay_command(original)
    except (RunDirError, OSError) as e:
        sys.stderr.write(f"mlxhydra: {e}\n")
        return 2
    except Exception as e:  # a corrupt .hydra file
        sys.stderr.write(f"mlxhydra: replay {args.run_dir}: unreadable run record ({e})\n")
        return 2
    for note in notes:
        sys.stderr.write(f"mlxhydra: {note}\n")
    sys.stderr.write(f"mlxhydra: replaying {original.path}\n  in {cwd}: {' '.join(command[3:])}\n")
    sys.stderr.flush()
    try:
        stdout = sys.stderr.fileno()  # keep stdout for the table
    except (AttributeError, OSError, ValueError):
        stdout = None
    try:
        rc = subprocess.run(command, cwd=cwd, stdout=stdout).returncode
    except KeyboardInterrupt:
        sys.stderr.write("mlxhydra: replay interrupted\n")
        return 130
    replayed = RunDir(out_dir)
    if not replayed.overrides.is_file():
        sys.stderr.write(f"mlxhydra: replay failed (exit {rc}) before creating its run directory\n")
        return 1
    rows = compare(original, replayed)
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
