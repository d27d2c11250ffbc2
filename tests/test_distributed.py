"""Distributed runs: 2 ranks of MLX's ring backend on 127.0.0.1, launched for real.

Sharded logits equal single-process logits (tensor-parallel llama and qwen3,
pipeline-parallel deepseek_v3), each rank holds about half the weights and a
pipeline rank reads only its own layers' files; rank 0 alone records; a
failure or an interrupt on rank 1 is recorded once, by rank 0, and ends both.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EMBEDDED_TINY, ROOT, make_model, read_run, run_cli, run_dirs

from mlxhydra.config.declared import shipped_defaults
from mlxhydra.distributed.launch import find_mlx_launch, free_ports

# One worker runs them all: the models fixture is built once, and two launches never race for
# free ports.
pytestmark = pytest.mark.xdist_group("distributed")

TOKENS = [[1, 5, 9, 20, 3, 17, 42, 8, 0, 63, 11, 12]]  # helpers/sharded_logits.py's
LAYERS = dict(vocab_size=64, num_hidden_layers=4, intermediate_size=256)  # the layers dominate


def launch(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m mlxhydra launch -n 2 ARGS`` (2 ranks of the ring backend)."""
    return run_cli("launch", "-n", "2", *args, cwd=cwd, timeout=timeout)


def files_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Small random float32 models; deepseek_v3 with one weight file per layer, and a tokenizer."""
    import tiny_data  # scripts/, on sys.path through conftest

    root = tmp_path_factory.mktemp("dist")
    dirs = {
        "llama": make_model(root / "llama", "llama", **LAYERS),
        "qwen3": make_model(root / "qwen3", "qwen3", **LAYERS),
        "deepseek_v3": make_model(root / "deepseek_v3", "deepseek_v3", vocab_size=64,
                                  bos_token_id=1, eos_token_id=2, shards="layers"),
    }
    tiny_data.save_tokenizer(dirs["deepseek_v3"])
    (dirs["deepseek_v3"] / "eval.txt").write_text((EMBEDDED_TINY / "eval.txt").read_text())
    return dirs


def single_process(model_dir: Path, quant=None):
    """Logits and parameter bytes of the model loaded in this process."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlxhydra.load.loader import build_model
    from mlxhydra.load.model_config import load_config
    from mlxhydra.load.settings import LoadSettings

    model, _, _ = build_model(model_dir, load_config(model_dir),
                              LoadSettings.from_groups(quant=quant))
    logits = np.array(model(mx.array(TOKENS)).astype(mx.float32))
    return logits, sum(v.nbytes for _, v in tree_flatten(model.parameters()))


@pytest.mark.slow
def test_sharded_logits_equal_single_process(models, tmp_path):
    """Tensor (llama, qwen3, deepseek_v3) and pipeline (deepseek_v3) sharding, float and 4-bit."""
    # The rule matches rank 1's layers only: decided on the whole model, it is no typo on rank 0.
    q4 = {"bits": 4, "group_size": 32, "rules": [{"pattern": r"layers\.0\.mlp", "bits": 8}]}
    cases = [
        ("llama", "tensor", None), ("qwen3", "auto", None), ("deepseek_v3", "pipeline", None),
        ("deepseek_v3", "tensor", None), ("llama", "tensor", q4), ("deepseek_v3", "pipeline", q4),
        ("llama", "pipeline", None),
    ]
    spec = [{"name": f"{m}_{s}_{q is not None}", "model_dir": str(models[m]), "shard": s, "quant": q}
            for m, s, q in cases]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    script = ROOT / "tests" / "helpers" / "sharded_logits.py"
    proc = subprocess.run(
        [find_mlx_launch(), "-n", "2", "--backend", "ring", "--starting-port", str(free_ports(2)),
         "--", sys.executable, str(script), str(tmp_path), str(tmp_path / "cases.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # mlx.launch's temporary files
    )
    for case, (model, shard, quant) in zip(spec, cases):
        ranks = [json.loads((tmp_path / f"{case['name']}.{r}.json").read_text()) for r in (0, 1)]
        if model == "llama" and shard == "pipeline":
            assert ranks[0] == {"error": "load.shard=pipeline: mlx-lm's llama has no pipeline "
                                         "parallelism (it supports: tensor)"}
            continue
        expected, total = single_process(models[model], quant)
        for r in (0, 1):
            logits = np.load(tmp_path / f"{case['name']}.{r}.npy")
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0, err_msg=case["name"])
            assert ranks[r]["mode"] == ("pipeline" if shard == "pipeline" else "tensor")
            assert 0.45 < ranks[r]["parameter_bytes"] / total < 0.6, (case["name"], ranks[r])
            assert ranks[r]["unmatched_rules"] == ([] if quant else None)
        if shard == "pipeline":  # rank 1 runs the first layers, rank 0 the last (mlx-lm's split)
            assert [r["layers"] for r in ranks] == [[2, 4], [0, 2]]
            files = [set(r["weight_files"]) for r in ranks]
            assert files[0] & files[1] == {"model-00005-of-00005.safetensors"}  # embeddings, head
            assert files[1] - files[0] == {"model-00001-of-00005.safetensors",
                                           "model-00002-of-00005.safetensors"}
            assert ranks[0]["weight_bytes_read"] < sum(
                f.stat().st_size for f in models[model].glob("*.safetensors")) * 0.6
    assert proc.returncode == 0, proc.stderr[-3000:]



def single_process_text(prompt: str, max_tokens: int) -> str:
    """Greedy generation with the embedded model in this process (mlx-lm's own generate)."""
    from mlx_lm import generate

    from mlxhydra.load.loader import load_model
    from mlxhydra.load.tokenizer import load_tokenizer

    model, config = load_model(EMBEDDED_TINY)
    tokenizer = load_tokenizer(EMBEDDED_TINY, config)
    return generate(model, tokenizer, prompt, max_tokens=max_tokens)


@pytest.mark.slow
def test_rank0_records_and_prints_others_write_nothing(tmp_path):
    user_tmp = tmp_path / "tmp"  # the ranks' own temporary files go where the user's do
    user_tmp.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli("launch", "-n", "2", "task=generate", "task.prompt='12+34='", "task.max_tokens=6",
                   cwd=cwd, env={"TMPDIR": str(user_tmp)}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # MLX's compiled CPU kernels, kept for the next run; launch's own files are gone
    assert any((user_tmp / "mlx").rglob("*.so")) and [p.name for p in user_tmp.iterdir()] == ["mlx"]
    tmp_path = cwd
    (run_dir,) = run_dirs(tmp_path)
    assert files_under(tmp_path) == sorted(
        str((run_dir / f).relative_to(tmp_path)) for f in
        (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "generations.jsonl",
         "metrics.json", "mlxhydra.log", "model_config.json", "run.json"))
    run = read_run(run_dir)
    assert run["status"] == "completed"
    assert run["metrics"]["text"] == single_process_text("12+34=", 6)
    assert proc.stdout.count("generate:") == 1  # rank 0 prints; rank 1 shows only problems
    dist = run["distributed"]
    assert {k: dist[k] for k in ("backend", "world_size", "shard_requested", "shard")} == {
        "backend": "ring", "world_size": 2, "shard_requested": "auto", "shard": "tensor"}
    assert len(dist["hosts"]) == 2 and [r["rank"] for r in dist["ranks"]] == [0, 1]
    tiny_bytes = (EMBEDDED_TINY / "model.safetensors").stat().st_size
    for rank in dist["ranks"]:
        assert rank["weight_files"] == ["model.safetensors"]
        assert 0.9 * tiny_bytes < rank["weight_bytes_read"] <= tiny_bytes  # tensor: every tensor
        assert 0 < rank["parameter_bytes"] < rank["weight_bytes_read"]
        assert rank["peak_memory_bytes"] > 0 and rank["max_rss_bytes"] > 0


def single_process_perplexity(model_dir: Path, task: dict) -> float:
    """exp(mean NLL) of the model on its eval.txt rows, in this process (kl's own formula)."""
    import mlx.core as mx

    from mlxhydra.load.loader import load_model
    from mlxhydra.load.tokenizer import load_tokenizer
    from mlxhydra.tasks.kl import log_probs
    from mlxhydra.tasks.perplexity import eval_data

    model, config = load_model(model_dir)
    tokens, _ = eval_data(task, load_tokenizer(model_dir, config), model_dir)
    lp = mx.take_along_axis(log_probs(model, tokens), tokens[:, 1:, None], axis=-1)
    return float(np.exp(-np.array(lp, dtype=np.float64).mean()))


@pytest.mark.slow
def test_pipeline_kl_of_a_model_with_itself_is_zero(models, tmp_path):
    """kl on a pipeline-sharded deepseek_v3: the reference is sharded too, rank 0 caches it."""
    proc = launch(f"model={models['deepseek_v3']}", "load.shard=pipeline", "task=kl",
                  "task.num_samples=4", "task.sequence_length=32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    run = read_run(run_dir)
    assert run["status"] == "completed"
    assert run["metrics"]["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert run["metrics"]["top1_agreement"] == 1.0
    assert run["metrics"]["perplexity"] == pytest.approx(single_process_perplexity(
        models["deepseek_v3"], {**shipped_defaults("task", "kl"), "sequence_length": 32, "num_samples": 4}),
        rel=1e-5)
    cached = [p for p in files_under(tmp_path / "outputs" / ".cache") if p.endswith(".safetensors")]
    assert len(cached) == 1  # 4 samples in one batch, written once (by rank 0)
    ranks = run["distributed"]["ranks"]
    assert [sorted(r["weight_files"]) for r in ranks] == [
        ["model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
         "model-00005-of-00005.safetensors"],
        ["model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
         "model-00005-of-00005.safetensors"]]


@pytest.mark.slow
def test_failure_on_rank1_only_is_recorded_once(models, tmp_path):
    """A weight file only rank 1 reads is truncated: rank 0 records rank 1's error; both end."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["deepseek_v3"], broken)
    layer0 = broken / "model-00001-of-00005.safetensors"
    os.truncate(layer0, layer0.stat().st_size // 2)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = launch(f"model={broken}", "load.shard=pipeline", cwd=cwd)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    run = read_run(run_dir)
    assert run["status"] == "failed" and run["error_type"] == "RankFailed"
    assert run["error"].startswith(f"rank 1 failed: {layer0}: truncated")
    assert f"mlxhydra: rank 1: {layer0}: truncated" in proc.stderr
    assert "ranks" not in run["distributed"] and run["distributed"]["world_size"] == 2


def rank_pid(cwd: Path, rank: int) -> int:
    """The pid of the rank started in ``cwd`` (Linux /proc), or 0 while there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != cwd:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"MLX_RANK={rank}".encode() in environ and b"mlxhydra" in cmdline:
            return int(entry.name)
    return 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc")
def test_interrupt_of_rank1_ends_all_and_is_recorded(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxhydra", "launch", "-n", "2", "task=bench", "task.trials=100000",
         "task.prompt_tokens=16", "task.generation_tokens=16"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the task runs once run.json has the load times
            runs = run_dirs(tmp_path)
            if runs and "quantize" in read_run(runs[0]).get("times", {}):
                break
            time.sleep(0.5)
        rank0, rank1 = rank_pid(tmp_path, 0), rank_pid(tmp_path, 1)
        assert rank0 and rank1, "the ranks were not found"
        time.sleep(1.0)  # well inside the task
        os.kill(rank1, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    run = read_run(run_dir)
    assert (run["status"], run["error"]) == ("interrupted", "rank 1 interrupted by SIGTERM")
    assert "mlxhydra: rank 1: interrupted by SIGTERM" in stderr
    # Rank 0 leaves its job thread inside an MLX call and ends with os._exit: allow it a moment.
    deadline = time.monotonic() + 5
    while (rank_pid(tmp_path, 0) or rank_pid(tmp_path, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not rank_pid(tmp_path, 0) and not rank_pid(tmp_path, 1)


SHARDED_REFUSAL = (
    "load.shard=none: 2 ranks were launched and each would load the whole model; expected "
    "auto, tensor or pipeline (or run one process); task.name=save: does not run on a model "
    "sharded across ranks (expected one of bench, generate, kl, load, perplexity)")


@pytest.mark.slow
def test_settings_that_cannot_run_sharded_fail_before_loading(tmp_path):
    proc = launch("load.shard=none", "task=save", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    run = read_run(run_dir)
    assert run["status"] == "failed" and "weights_fingerprint" not in run
    assert run["error"] == SHARDED_REFUSAL


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc")
def test_a_slow_rank0_is_not_ended_before_it_records(tmp_path):
    """Rank 1 fails its checks while rank 0 is held up (stopped for 5 s) before its own record.

    mlx.launch stops every rank once one exits: rank 1 waits until rank 0 has
    recorded, so the record says what failed, not that rank 0 was interrupted.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxhydra", "launch", "-n", "2", "load.shard=none", "task=save"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "outputs").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # rank 0 has joined the ranks and Hydra starts its job
        rank0 = rank_pid(tmp_path, 0)
        assert rank0, "rank 0 was not found"
        os.kill(rank0, signal.SIGSTOP)
        time.sleep(5.0)  # rank 1 fails its checks meanwhile
        os.kill(rank0, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert (read_run(run_dir)["status"], read_run(run_dir)["error"]) == ("failed", SHARDED_REFUSAL)


def test_multirun_is_refused_across_ranks(monkeypatch):
    from mlxhydra.distributed import ranks

    assert ranks.multirun_refusal(["-m", "quant.bits=4,8"]) is None  # one process
    monkeypatch.setattr(ranks, "_world", ranks.World(rank=0, size=2, backend="ring"))
    assert ranks.multirun_refusal(["--multirun", "quant.bits=4,8"]) == (
        "-m/--multirun is not supported across 2 ranks: launch one distributed run per setting")
    assert ranks.multirun_refusal(["quant.bits=4"]) is None


def test_load_shard_is_validated_and_ignored_in_one_process(tmp_path, llama_dir):
    import mlx.core as mx

    from mlxhydra import compose
    from mlxhydra.errors import ConfigError
    from mlxhydra.job.pipeline import prepare
    from mlxhydra.job.validation import validate

    with pytest.raises(ConfigError, match=r"load.shard='rows': expected one of auto, none, tensor, pipeline"):
        validate(compose([f"model={llama_dir}", "load.shard=rows"]))
    model, report = prepare(compose([f"model={llama_dir}", "load.shard=tensor"]))
    assert report.sharding == {}
    expected, _ = single_process(llama_dir)
    assert np.array_equal(np.array(model(mx.array(TOKENS))), expected)


def test_backend_from_the_launchers_environment(tmp_path):
    from mlxhydra.distributed.ranks import launched_backend, leader_address

    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.2:5001"]]))
    ring = {"MLX_HOSTFILE": str(hostfile), "MLX_RANK": "1"}
    assert launched_backend(ring) == "ring" and leader_address("ring", ring) == "10.0.0.1"
    (tmp_path / "one.json").write_text("\n")  # mlx.launch -n 1
    assert launched_backend({"MLX_HOSTFILE": str(tmp_path / "one.json"), "MLX_RANK": "0"}) is None
    jaccl = {"MLX_JACCL_COORDINATOR": "10.0.0.9:32323", "MLX_RANK": "0"}
    assert launched_backend(jaccl) == "jaccl" and leader_address("jaccl", jaccl) == "10.0.0.9"
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"
    assert launched_backend({}) is None


def test_launch_exit_status_combines_the_ranks(tmp_path, capsys):
    from mlxhydra.distributed.launch import combined_status

    (tmp_path / "0").write_text("0")
    (tmp_path / "1").write_text("0")
    assert combined_status(tmp_path, 2) == 0
    (tmp_path / "1").write_text("1")
    assert combined_status(tmp_path, 2) == 1
    (tmp_path / "0").write_text("143")
    assert combined_status(tmp_path, 2) == 143
    assert combined_status(tmp_path, 3) == 143
    assert "rank 2 ended without an exit status" in capsys.readouterr().err


def test_a_pipeline_rank_picks_its_files_by_the_index_and_never_opens_a_fifo(tmp_path):
    """The safetensors index names each rank's files; an index that is no regular file means all."""
    import threading

    from mlxhydra.load.sharding import files_for_layers

    files = [tmp_path / f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for f in files:
        f.write_bytes(b"")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"model.embed_tokens.weight": files[0].name, "model.layers.0.mlp.weight": files[0].name,
                  "model.layers.1.mlp.weight": files[1].name, "model.layers.2.mlp.weight": files[2].name}
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert files_for_layers(files, (1, 2)) == [files[0], files[1]]  # the embedding, layer 1
    assert files_for_layers(files, (2, 3)) == [files[0], files[2]]
    index.unlink()
    os.mkfifo(index)  # reading it would block for ever
    chosen = []
    reader = threading.Thread(target=lambda: chosen.append(files_for_layers(files, (1, 2))), daemon=True)
    reader.start()
    reader.join(10)
    assert chosen == [files]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="sets the CPUs a process may use")
def test_launch_refuses_more_ranks_than_cores_before_starting_any(tmp_path):
    """On one CPU: -n 1 runs (as many ranks as cores), -n 2 and -n 0 are refused in one line."""
    one_cpu = min(os.sched_getaffinity(0))

    def launch_on_one_cpu(n: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        return subprocess.run([sys.executable, "-m", "mlxhydra", "launch", "-n", n, "--cfg", "job"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
                              preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))

    refused = launch_on_one_cpu("2")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "mlxhydra launch: -n 2: every rank runs on this machine (one host, 127.0.0.1), which has 1 "
        "core for this process; expected at most 1 rank (on several machines use mlx.launch "
        "--hostfile)\n")
    none = launch_on_one_cpu("0")
    assert (none.returncode, none.stderr) == (2, "mlxhydra launch: -n 0: expected at least 1 rank\n")
    ran = launch_on_one_cpu("1")
    assert ran.returncode == 0, ran.stderr
    assert "task:\n  name: load" in ran.stdout  # the rank printed its config
    assert not (tmp_path / "outputs").exists()  # --cfg: no run


def test_rank_reports_come_only_from_who_knows_the_runs_secret():
    """Rank 0's report channel: a forged report (a JSON line from anyone, or a wrong key) ends
    nothing and is named once in the log; a report that proves the shared secret is heard."""
    import logging
    import socket
    import threading
    from multiprocessing.connection import Connection

    import mlx.core as mx

    from mlxhydra.distributed.reports import RankReports, send_report

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("mlxhydra").addHandler(handler)
    try:
        reports = RankReports(mx.distributed.init(), "127.0.0.1")  # rank 0 of 1: it listens
        reports.size = 2  # as if rank 1 had joined
        forged = {"status": "failed", "error": "forged", "rank": 1}
        with socket.create_connection(("127.0.0.1", reports.port), timeout=10) as s:
            s.sendall(json.dumps(forged).encode() + b"\n")
            try:
                while s.recv(4096):  # until rank 0 hangs up
                    pass
            except ConnectionResetError:  # with the line unread
                pass
        # the report in the channel's framing, without the handshake
        framed = Connection(socket.create_connection(("127.0.0.1", reports.port), timeout=10).detach())
        framed.send_bytes(json.dumps(forged).encode())
        assert send_report("127.0.0.1", reports.port, bytes(32), forged, ack_wait=1) is False
        deadline = time.monotonic() + 10
        while reports.ignored < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        framed.close()
        assert reports.first(0.2) is None and reports.ignored == 3
        assert seen == ["rank reports: ignored a connection from 127.0.0.1: it did not prove the "
                        "run's secret"]
        real = {"status": "failed", "error": "rank 1's own error", "rank": 1}
        acknowledged = []
        sender = threading.Thread(target=lambda: acknowledged.append(
            send_report("127.0.0.1", reports.port, reports._key, real, ack_wait=10)))
        sender.start()
        assert reports.first(10) == real
        reports.acknowledge()
        sender.join(10)
        assert acknowledged == [True]
    finally:
        logging.getLogger("mlxhydra").removeHandler(handler)
