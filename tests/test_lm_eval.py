"""task=lm_eval: lm-evaluation-harness through mlx_lm.evaluate's adapter, on the model as built.

In-process tests run the job's own stages (compose, validate, prepare, run_task);
the ``slow`` ones run the real command line offline (``HF_DATASETS_OFFLINE=1``,
an empty Hugging Face home). Everything uses the embedded tiny model and the
tasks mlxhydra ships for it (mlxhydra/lm_eval_tasks), or the test's own task YAML.
"""

import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, read_run, run_cli, run_dirs
from test_bad_input import assert_failed_cleanly
from test_sweeps import job_dirs, read_csv, sweep_dirs
from test_tasks import task

from mlxhydra.config.composition import compose
from mlxhydra.errors import ConfigError, TaskError
from mlxhydra.job.validation import validate
from mlxhydra.lm_eval_tasks import TASKS_DIR
from mlxhydra.load.data_files import file_sha256
from mlxhydra.load.tokenizer import load_tokenizer
from mlxhydra.tasks import task_problems

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(
    not HAS_LM_EVAL, reason="lm-eval is not installed (pip install 'mlxhydra[eval]')")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def offline_env(tmp_path: Path) -> dict:
    """No network and an empty Hugging Face home: nothing can come from anywhere but here."""
    return {**OFFLINE, "HF_HOME": str(tmp_path / "hf_home")}


def samples(metrics: dict, name: str) -> list:
    """The per-sample log lm-eval wrote for one task."""
    path = Path(metrics["samples_files"][name])
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompt_of(sample: dict) -> str:
    return sample["arguments"]["gen_args_0"]["arg_0"]


# ---------------------------------------------------------------------------- shipped data

def test_shipped_task_data_are_the_heldout_problems():
    import tiny_data  # scripts/, on sys.path through conftest

    test, fewshot = tiny_data.lm_eval_rows()
    for name, rows in (("tiny_sums_test.jsonl", test), ("tiny_sums_fewshot.jsonl", fewshot)):
        shipped = [json.loads(x) for x in (TASKS_DIR / name).read_text().splitlines()]
        assert shipped == rows
    accuracy = [json.loads(x) for x in (EMBEDDED_TINY / "accuracy.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"]) for r in test] == [(a["prompt"], a["answer"]) for a in accuracy]
    for r in test + fewshot:
        assert r["choices"][r["label"]] == r["answer"] and len(set(r["choices"])) == 4
        assert all(len(c) == 3 and c.isdigit() for c in r["choices"])
    assert not {r["question"] for r in fewshot} & {r["question"] for r in test}


# ---------------------------------------------------------------------------- settings

@pytest.mark.slow
@needs_lm_eval
def test_bad_settings_are_each_named_before_loading():
    bad = {"name": "lm_eval", "tasks": [], "num_fewshot": -1, "limit": 1.5, "batch_size": 0,
           "apply_chat_template": "yes", "fewshot_as_multiturn": 1, "max_tokens": 0,
           "seed": -3, "include_path": "/no/such/dir", "confirm_run_unsafe_code": "no",
           "chat_template_args": [1]}
    problems = task_problems(bad)
    for key in ("tasks", "num_fewshot", "limit", "batch_size", "apply_chat_template",
                "fewshot_as_multiturn", "max_tokens", "seed", "confirm_run_unsafe_code",
                "chat_template_args"):
        assert any(p.startswith(f"task.{key}=") for p in problems), (key, problems)
    assert "task.include_path: /no/such/dir is not a directory" in problems
    with pytest.raises(ConfigError) as e:
        validate(compose(["task=lm_eval", "task.tasks=[tiny_sums,tiny_sumz]",
                          "task.apply_chat_template=false", "task.fewshot_as_multiturn=true"]))
    assert e.value.problems[0].startswith("task.fewshot_as_multiturn=true needs a chat template")
    ok = compose(["task=lm_eval", "task.tasks=[tiny_sums,tiny_sumz]"])
    with pytest.raises(ConfigError) as e:
        validate(ok)
    [problem] = e.value.problems
    assert problem.startswith("task.tasks: 'tiny_sumz' is not a task, group or tag")
    assert "did you mean tiny_sums" in problem


def test_without_lm_eval_the_check_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now fails
    problems = task_problems({"name": "lm_eval", "tasks": ["tiny_sums"], "batch_size": 8})
    assert len(problems) == 1 and "pip install 'mlxhydra[eval]'" in problems[0]
    assert problems[0].startswith("task=lm_eval needs lm-evaluation-harness")


# ---------------------------------------------------------------------------- the adapter

@needs_lm_eval
def test_in_memory_adapter_has_what_mlx_lm_own_constructor_sets():
    """in_memory_mlxlm sets the attributes MLXLM.__init__ sets (its private names included)."""
    from mlx_lm.evaluate import MLXLM

    from mlxhydra._upstream import in_memory_mlxlm

    own = MLXLM(str(EMBEDDED_TINY), batch_size=4)
    ours = in_memory_mlxlm(own._model, own.tokenizer, batch_size=4)
    assert set(vars(ours)) - {"_model_info"} == set(vars(own))
    fresh = {"cache_hook"}  # a new (empty) CacheHook per instance, from lm-eval's LM.__init__
    assert ({k: v for k, v in vars(ours).items() if k not in fresh | {"_model_info"}}
            == {k: v for k, v in vars(own).items() if k not in fresh})


@needs_lm_eval
@pytest.mark.parametrize("bits", [None, 4])
def test_loglikelihood_is_the_sum_of_the_models_log_probabilities(bits, tmp_path):
    """Each request's value equals log p(continuation | context) summed from the model's logits."""
    from lm_eval.api.instance import Instance

    from mlxhydra._upstream import in_memory_mlxlm
    from mlxhydra.job.pipeline import prepare

    cfg = compose([f"model={EMBEDDED_TINY}"] + ([f"quant.bits={bits}"] if bits else []))
    model, report = prepare(cfg)
    tokenizer = load_tokenizer(EMBEDDED_TINY, report.model_config)
    lm = in_memory_mlxlm(model, tokenizer, use_chat_template=False)
    pairs = [("16+99=", "115"), ("16+99=", "116"), ("16+99=", "1"), ("41+28=069\n90-11=", "079\n"),
             ("7", "3+12=015")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = lm.loglikelihood(requests)

    for (context, continuation), (value, greedy) in zip(pairs, got):
        ids = tokenizer.encode(context + continuation)
        start = len(tokenizer.encode(context))
        logits = np.array(model(mx.array([ids[:-1]])).astype(mx.float32))[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        targets = ids[start:]
        rows = np.arange(start - 1, len(ids) - 1)
        assert value == pytest.approx(logp[rows, targets].sum(), abs=2e-4)
        assert greedy == bool(np.all(logits[rows].argmax(-1) == targets))
    assert got[0][0] != got[1][0]
    if bits:  # the quantized model is what was scored, not the float one
        float_model, _ = prepare(compose([f"model={EMBEDDED_TINY}"]))
        float_value = in_memory_mlxlm(float_model, tokenizer, use_chat_template=False).loglikelihood(
            requests[:1])[0][0]
        assert float_value != pytest.approx(got[0][0], abs=1e-3)


# ---------------------------------------------------------------------------- scores

@pytest.mark.slow
@needs_lm_eval
def test_same_scores_as_mlx_lm_evaluate(tmp_path, monkeypatch):
    """mlx_lm.evaluate's own entry point and task=lm_eval: the same results on the same model."""
    from mlx_lm import evaluate as mlx_lm_evaluate

    out = tmp_path / "mlx_lm"
    monkeypatch.chdir(TASKS_DIR)  # mlx_lm.evaluate takes task YAML files relative to here
    monkeypatch.setattr(sys, "argv", [
        "mlx_lm.evaluate", "--model", str(EMBEDDED_TINY), "--tasks", "tiny_sums.yaml",
        "tiny_sums_mc.yaml", "--output-dir", str(out), "--limit", "40", "--seed", "0"])
    mlx_lm_evaluate.main()
    [written] = out.iterdir()
    theirs = json.loads(written.read_text())
    monkeypatch.chdir(tmp_path)

    ours, _ = task(EMBEDDED_TINY, tmp_path / "run", "task=lm_eval", "task.limit=40", "seed=0")
    results = json.loads(Path(ours["results_file"]).read_text())["results"]
    assert results == theirs
    assert ours["tiny_sums.exact_match"] == theirs["tiny_sums"]["exact_match,none"]
    assert ours["tiny_sums_mc.acc_stderr"] == theirs["tiny_sums_mc"]["acc_stderr,none"]
    assert ours["score"] == pytest.approx(
        (theirs["tiny_sums"]["exact_match,none"] + theirs["tiny_sums_mc"]["acc,none"]) / 2)


@pytest.mark.slow
@needs_lm_eval
def test_two_bit_scores_below_float(tmp_path):
    common = ("task=lm_eval", "task.limit=100")
    full, _ = task(EMBEDDED_TINY, tmp_path / "float", *common)
    low, _ = task(EMBEDDED_TINY, tmp_path / "2bit", *common, "quant.bits=2")
    assert low["tiny_sums.exact_match"] < full["tiny_sums.exact_match"]
    assert low["tiny_sums_mc.acc"] < full["tiny_sums_mc.acc"]
    assert low["score"] < full["score"]
    assert full["score_metrics"] == ["tiny_sums.exact_match", "tiny_sums_mc.acc"]
    assert full["tiny_sums.samples"] == full["tiny_sums_mc.samples"] == 100
    assert 0 < full["score_stderr"] < 0.1


@needs_lm_eval
def test_limit_and_num_fewshot_shape_the_prompts(tmp_path):
    zero, loaded = task(EMBEDDED_TINY, tmp_path / "zero", "task=lm_eval", "task.limit=5",
                        "task.apply_chat_template=false")
    few, _ = task(EMBEDDED_TINY, tmp_path / "few", "task=lm_eval", "task.limit=0.05",
                  "task.num_fewshot=3", "task.apply_chat_template=false", model=loaded)
    for name in ("tiny_sums", "tiny_sums_mc"):
        assert len(samples(zero, name)) == zero[f"{name}.samples"] == 5
        assert len(samples(few, name)) == few[f"{name}.samples"] == 10  # 5% of 200
    assert zero["num_fewshot"] == {"tiny_sums": 0, "tiny_sums_mc": 0}
    assert few["num_fewshot"] == {"tiny_sums": 3, "tiny_sums_mc": 3}
    for sample in samples(zero, "tiny_sums"):
        assert prompt_of(sample) == sample["doc"]["question"]
    fewshot_questions = {json.loads(x)["question"]
                         for x in (TASKS_DIR / "tiny_sums_fewshot.jsonl").read_text().splitlines()}
    for sample in samples(few, "tiny_sums"):
        *shots, question = prompt_of(sample).split("\n")
        assert question == sample["doc"]["question"] and len(shots) == 3
        assert all(s[:6] in fewshot_questions and len(s) == 9 for s in shots)
    for sample in samples(few, "tiny_sums_mc"):
        contexts = {arg["arg_0"] for arg in sample["arguments"].values()}
        assert len(contexts) == 1 and contexts.pop().count("\n") == 3


@needs_lm_eval
def test_unsafe_tasks_need_consent(tmp_path):
    (tmp_path / "tasks").mkdir()
    # The shipped task included, not copied: a copy's !function would need load.trust_remote_code.
    yaml_text = f"include: {TASKS_DIR / 'tiny_sums.yaml'}\ntask: run_my_code\nunsafe_code: true\n"
    (tmp_path / "tasks" / "run_my_code.yaml").write_text(yaml_text)
    args = ("task=lm_eval", "task.tasks=[run_my_code]", f"task.include_path={tmp_path / 'tasks'}",
            "task.limit=2")
    with pytest.raises(TaskError, match="run_my_code run code the model writes; set "
                                        "task.confirm_run_unsafe_code=true"):
        task(EMBEDDED_TINY, tmp_path / "refused", *args)
    assert not (tmp_path / "refused" / "lm_eval").exists()
    allowed, _ = task(EMBEDDED_TINY, tmp_path / "allowed", *args, "task.confirm_run_unsafe_code=true")
    assert allowed["run_my_code.samples"] == 2


# ---------------------------------------------------------------------------- the command

USER_TASK = """\
task: {name}
{dataset}
output_type: generate_until
test_split: test
doc_to_text: "{{q}}"
doc_to_target: "{{a}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@needs_lm_eval
@pytest.mark.slow
def test_user_task_from_include_path_with_local_files_runs_offline(tmp_path):
    data = tmp_path / "data" / "sums.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in
                            [("16+99=", "115"), ("90-11=", "079"), ("61+33=", "094")]))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_sums.yaml").write_text(USER_TASK.replace("{name}", "my_sums").replace(
        "{dataset}", f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}"))
    result = run_cli("task=lm_eval", "task.tasks=[my_sums,tiny_sums]", "task.include_path=tasks",
                     "task.limit=3", cwd=tmp_path, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    record = read_run(run_dir)
    metrics = record["metrics"]
    assert record["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert metrics["my_sums.samples"] == 3 and 0 <= metrics["my_sums.exact_match"] <= 1
    assert [s["doc"]["q"] for s in samples(metrics, "my_sums")] == ["16+99=", "90-11=", "61+33="]
    assert metrics["datasets"]["my_sums"]["data_files"] == {str(data): file_sha256(data)}
    assert metrics["datasets"]["my_sums"]["dataset"] == "json"
    assert metrics["lm_eval_version"] == importlib.metadata.version("lm_eval")
    lm_eval_results = json.loads(Path(metrics["results_file"]).read_text())
    assert lm_eval_results["results"]["my_sums"]["exact_match,none"] == metrics["my_sums.exact_match"]
    assert lm_eval_results["config"]["model_dir"] == str(EMBEDDED_TINY)
    assert Path(metrics["results_file"]).parent == run_dir / "lm_eval"


@needs_lm_eval
@pytest.mark.slow
def test_a_missing_dataset_is_one_line_naming_task_dataset_and_fetch(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_sums.yaml").write_text(USER_TASK.replace("{name}", "hub_sums").replace(
        "{dataset}", "dataset_path: someone/no-such-sums"))
    result = run_cli("task=lm_eval", "task.tasks=[hub_sums]", "task.include_path=tasks",
                     cwd=tmp_path, env=offline_env(tmp_path))
    assert_failed_cleanly(result, tmp_path, says=[
        "lm-eval task 'hub_sums': dataset 'someone/no-such-sums' is not in the local Hugging Face "
        "datasets cache",
        "fetch it once with network access: python -c \"import datasets; "
        "datasets.load_dataset('someone/no-such-sums')\""])


@pytest.mark.slow
def test_a_missing_lm_eval_is_one_line_naming_the_extra(tmp_path):
    shadow = tmp_path / "shadow" / "lm_eval"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'lm_eval'\", "
                                        "name='lm_eval')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = run_cli("task=lm_eval", cwd=tmp_path, env={"PYTHONPATH": path})
    record = assert_failed_cleanly(result, tmp_path, says=[
        "task=lm_eval needs lm-evaluation-harness", "pip install 'mlxhydra[eval]'"])
    assert "weight_files" not in record  # nothing was read


@needs_lm_eval
@pytest.mark.slow
def test_sweep_over_bits_summarises_scores_with_error_bars(tmp_path):
    result = run_cli("-m", "task=lm_eval", "quant.bits=2,8", "task.limit=60", cwd=tmp_path,
                     env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    rows = read_csv(sweep / "summary.csv")
    assert [r["quant.bits"] for r in rows] == ["2", "8"]
    low, high = (float(r["score"]) for r in rows)
    assert low < high
    for row, job in zip(rows, job_dirs(sweep)):
        metrics = read_run(job)["metrics"]
        assert float(row["score_stderr"]) == pytest.approx(metrics["score_stderr"])
        assert float(row["tiny_sums_mc.acc"]) == pytest.approx(metrics["tiny_sums_mc.acc"])
        assert (job / "lm_eval").is_dir() and len(list((job / "lm_eval").glob("samples_*"))) == 2
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| score |" in (sweep / "summary.md").read_text()


@needs_lm_eval
def test_tiny_sums_answers_are_task_accuracy_predictions(tmp_path):
    """Two implementations, one answer: lm-eval's tiny_sums (mlx-lm's batch_generate) and
    task=accuracy (stream_generate) decode the same greedy answers to the same problems."""
    ours, loaded = task(EMBEDDED_TINY, tmp_path / "lm_eval", "task=lm_eval", "task.tasks=tiny_sums",
                        "task.limit=40")
    accuracy, _ = task(EMBEDDED_TINY, tmp_path / "accuracy", "task=accuracy", "task.num_samples=40",
                       model=loaded)
    predictions = [json.loads(x) for x in Path(accuracy["predictions"]).read_text().splitlines()]
    assert [s["doc"]["question"] for s in samples(ours, "tiny_sums")] == [p["prompt"] for p in predictions]
    assert [s["filtered_resps"][0] for s in samples(ours, "tiny_sums")] == [
        p["prediction"] for p in predictions]
    assert ours["tiny_sums.exact_match"] == accuracy["accuracy"]
