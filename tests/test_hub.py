"""Hugging Face ids as models (``model=org/name[@REVISION]``), offline, from a real cache layout.

The fixture cache holds mlx-lm-built models in huggingface_hub's layout
(tests/helpers/hub_cache.py): ``org/tiny`` has two commits, ``main`` at B and
the tag ``v1`` at A. Nothing is downloaded: huggingface_hub runs offline.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import EMBEDDED_TINY, make_model, read_run, run_cli
from helpers.hub_cache import add_snapshot, commit_hash, repo_folder

from mlxhydra.config import hub
from mlxhydra.config.composition import compose
from mlxhydra.errors import HubError
from mlxhydra.job.pipeline import prepare

REPO = "org/tiny"
COMMIT_A, COMMIT_B = commit_hash("a"), commit_hash("b")
TOKENS = [[1, 5, 20, 21, 22, 11, 20, 30]]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def with_tokenizer(directory: Path) -> Path:
    for name in TOKENIZER_FILES:
        shutil.copy(EMBEDDED_TINY / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """org/tiny: commit A (tag v1, seed 0) and commit B (main, seed 1), vocab 128 with a tokenizer."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    for seed, commit, refs in ((0, COMMIT_A, ("v1",)), (1, COMMIT_B, ("main",))):
        src = with_tokenizer(make_model(root / f"src{seed}", vocab_size=128, seed=seed))
        add_snapshot(cache, REPO, src, commit, refs)
    return cache


@pytest.fixture
def offline(hub_cache, monkeypatch):
    """huggingface_hub offline on the fixture cache, in this process; returns the env for subprocesses."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_resolved", {})  # resolutions are kept per process
    return {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}


def snapshot(cache: Path, commit: str) -> Path:
    return repo_folder(cache, REPO) / "snapshots" / commit


@pytest.mark.parametrize("value, revision, commit", [
    (REPO, None, COMMIT_B),
    (f"{REPO}@main", "main", COMMIT_B),
    (f"{REPO}@v1", "v1", COMMIT_A),
    (f"{REPO}@{COMMIT_A}", COMMIT_A, COMMIT_A),
])
def test_hub_id_resolves_and_loads_as_mlx_lm_load(offline, hub_cache, tmp_path, monkeypatch,
                                                  value, revision, commit):
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.utils import _download

    monkeypatch.chdir(tmp_path)
    cfg = compose([f"model={value}"])
    assert cfg.model_dir == str(snapshot(hub_cache, commit))
    assert dict(cfg.model_hub) == {"repo_id": REPO, "revision": revision, "commit": commit,
                                   "snapshot": cfg.model_dir}
    assert Path(_download(REPO, revision=revision)) == Path(cfg.model_dir)  # mlx-lm's own lookup
    ours, _ = prepare(cfg)
    theirs, _ = mlx_lm_load(REPO, revision=revision)
    expected = np.array(theirs(mx.array(TOKENS)))
    assert np.array_equal(np.array(ours(mx.array(TOKENS))), expected)


def test_the_two_commits_are_different_models(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, _ = prepare(compose([f"model={REPO}@v1"]))
    b, _ = prepare(compose([f"model={REPO}"]))
    assert not np.allclose(np.array(a(mx.array(TOKENS))), np.array(b(mx.array(TOKENS))))


def test_a_local_directory_of_that_name_wins(offline, tmp_path, monkeypatch):
    local = make_model(tmp_path / "org" / "tiny", vocab_size=128, seed=5)
    monkeypatch.chdir(tmp_path)
    cfg = compose([f"model={REPO}"])
    assert cfg.model_dir == str(local) and cfg.model_hub is None


def test_offline_and_not_cached_is_one_line_naming_the_id_and_the_fix(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError) as missing:
        compose(["model=org/missing"])
    message = str(missing.value)
    assert message.startswith(f"model=org/missing: no local directory {tmp_path / 'org/missing'}")
    assert "HF_HUB_OFFLINE" in message and "`hf download org/missing`" in message
    assert "\n" not in message
    with pytest.raises(HubError, match=r"revision 'nope' .*`hf download org/tiny --revision nope`"):
        compose([f"model={REPO}@nope"])


@pytest.mark.slow
def test_cli_sweep_over_ids_records_them_and_replay_pins_the_commit(offline, hub_cache, tmp_path):
    env = offline
    result = run_cli("-m", f"model={REPO},{REPO}@v1", "task=generate", "task.max_tokens=6",
                     "task.prompt='12+7='", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    jobs = sorted((p.parent for p in (tmp_path / "outputs").rglob("run.json")),
                  key=lambda p: int(p.name.split("_")[0]))
    records = [read_run(j) for j in jobs]
    assert [r["hub"]["model"] for r in records] == [
        {"repo_id": REPO, "revision": None, "commit": COMMIT_B,
         "snapshot": str(snapshot(hub_cache, COMMIT_B))},
        {"repo_id": REPO, "revision": "v1", "commit": COMMIT_A,
         "snapshot": str(snapshot(hub_cache, COMMIT_A))},
    ]
    assert [r["model_dir"] for r in records] == [str(snapshot(hub_cache, c)) for c in (COMMIT_B, COMMIT_A)]
    # The streamed text on stdout is the recorded text, and the console does not repeat it.
    texts = [r["metrics"]["text"] for r in records]
    streamed = result.stdout.split("==========\n")
    assert [streamed[1], streamed[3]] == [t + "\n" for t in texts]
    assert "generate: text" not in result.stdout
    assert f"generate: text {texts[0]!r}" in (jobs[0] / "mlxhydra.log").read_text()

    # main moves on to commit A: the replay of job 0 still loads commit B.
    main = repo_folder(hub_cache, REPO) / "refs" / "main"
    main.write_text(COMMIT_A)
    try:
        replay = run_cli("replay", str(jobs[0]), cwd=tmp_path, env=env)
    finally:
        main.write_text(COMMIT_B)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    [new] = sorted((tmp_path / "outputs" / "runs").glob("*/*_replay-*"))
    assert yaml.safe_load((new / ".hydra/overrides.yaml").read_text())[0] == f"model={REPO}@{COMMIT_B}"
    record = read_run(new)
    assert record["hub"]["model"]["commit"] == COMMIT_B
    assert record["metrics"]["text"] == texts[0]
    assert "replay matches" in replay.stdout


@pytest.mark.slow
def test_cli_offline_and_missing_fails_with_one_line_and_a_record(offline, tmp_path):
    result = run_cli("model=org/missing@v2", cwd=tmp_path, env=offline)
    assert result.returncode == 1
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("model=")]
    assert "`hf download org/missing --revision v2`" in line
    assert "Traceback" not in result.stderr
    [record_file] = (tmp_path / "outputs").rglob("run.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "failed" and record["stage"] == "compose"
    assert "hf download org/missing" in record["error"]


def test_ids_in_a_presets_defaults_and_as_kl_reference(offline, hub_cache, tmp_path, monkeypatch):
    from mlxhydra.job.validation import validate
    from mlxhydra.tasks import TaskInput, run_task

    conf = tmp_path / "my_conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_v1_long.yaml").write_text(
        f"defaults:\n  - {REPO}:v1\n  - _self_\nmax_position_embeddings: 1024\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose([f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "model=tiny_v1_long",
                   "task=kl", f"task.reference={REPO}@v1", "task.num_samples=2",
                   "task.sequence_length=16", f"task.cache_dir={tmp_path / 'kl'}"])
    assert cfg.model_hub.commit == COMMIT_A and cfg.model.max_position_embeddings == 1024
    settings = validate(cfg)
    model, report = prepare(cfg, settings)
    job = TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                    model_config=report.model_config, model_dir=Path(settings.model_dir),
                    run_dir=tmp_path)
    metrics = run_task(job)
    assert metrics["kl_mean"] == 0.0  # the same weights at commit A
    assert job.hub["task.reference"]["commit"] == COMMIT_A
    assert metrics["reference"]["hub"]["revision"] == "v1"


@pytest.fixture
def odd_cache(tmp_path, monkeypatch):
    """org/odd at commit A (main; a branch with an unusual but valid name), a file outside
    refs/ that holds commit A, and org/blank whose refs/main is empty; offline."""
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    src = with_tokenizer(make_model(tmp_path / "src", vocab_size=128, seed=0))
    add_snapshot(cache, "org/odd", src, COMMIT_A, ("main", "feat/x-1.2_b@home"))
    (repo_folder(cache, "org/odd") / "outside").write_text(COMMIT_A)  # not a ref
    add_snapshot(cache, "org/blank", src, COMMIT_A, ("main",))
    (repo_folder(cache, "org/blank") / "refs" / "main").write_text("")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_resolved", {})
    monkeypatch.chdir(tmp_path)
    return cache


REF_RULES = "expected a branch, tag or commit hash (git's ref-name rules: git check-ref-format)"


@pytest.mark.parametrize("revision, why", [
    ("../outside", "contains '..'"),
    ("refs/../../outside", "contains '..'"),
    ("", "is empty"),
    ("a\\b", "contains '\\\\'"),
    ("/main", "starts or ends with '/'"),
    ("x//y", "contains '//'"),
    (".main", "has a component starting with '.' ('.main')"),
    ("main.lock", "has a component ending with '.lock' ('main.lock')"),
    ("ma in", "contains ' '"),
    ("@", "is '@'"),
])
def test_a_revision_git_would_refuse_is_refused_before_the_cache_is_read(odd_cache, revision, why):
    with pytest.raises(HubError) as e:
        compose([f"model=org/odd@{revision}"])
    assert str(e.value) == f"model=org/odd@{revision}: the revision {revision!r} {why}; {REF_RULES}"


def test_a_valid_but_unusual_revision_resolves(odd_cache):
    cfg = compose(["model=org/odd@feat/x-1.2_b@home"])
    assert cfg.model_hub.commit == COMMIT_A and cfg.model_hub.revision == "feat/x-1.2_b@home"


def test_an_empty_refs_file_is_not_taken_for_a_snapshot(odd_cache):
    repo = repo_folder(odd_cache, "org/blank")
    with pytest.raises(HubError) as e:
        compose(["model=org/blank"])
    assert str(e.value) == (
        f"model=org/blank: the Hugging Face cache resolved org/blank to {repo / 'snapshots'}, not a "
        f"snapshot of a commit: {repo / 'refs' / 'main'} holds '' (expected a 40-hex commit hash); "
        "download it again with `hf download org/blank`")


def test_the_ref_name_rules_are_gits(tmp_path):
    """Each name is judged as `git check-ref-format --allow-onelevel` judges it."""
    import subprocess

    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    names = ["main", "v1.0", "refs/pr/1", "feat/x-1.2_b@home", "a@b", "日本", "HEAD", "a.lock.b",
             "", "@", "a@{b", "a..b", "../x", "a/.b", ".a", "a.lock", "a/b.lock/c", "a/", "/a",
             "a//b", "a.", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b", "a\x01b", "a\x7fb"]
    for name in names:
        by_git = subprocess.run([git, "check-ref-format", "--allow-onelevel", name],
                                capture_output=True).returncode == 0
        assert (hub.revision_problem(name) is None) == by_git, name


@pytest.mark.slow
def test_cli_a_revision_outside_refs_fails_with_one_line_and_a_record(odd_cache, tmp_path):
    result = run_cli("model=org/odd@../outside", cwd=tmp_path,
                     env={"HF_HUB_CACHE": str(odd_cache), "HF_HUB_OFFLINE": "1"})
    message = f"model=org/odd@../outside: the revision '../outside' contains '..'; {REF_RULES}"
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == message
    [record_file] = (tmp_path / "outputs").rglob("run.json")
    record = json.loads(record_file.read_text())
    assert (record["status"], record["stage"], record["error"]) == ("failed", "compose", message)
