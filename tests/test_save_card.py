"""task=save writes what mlx_lm.convert writes: a model card (README.md) and the job's tokenizer
saved by its own save_pretrained, read back by mlx_lm.load and transformers' AutoTokenizer."""

import json
import logging
import shutil
from importlib import metadata
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, read_run, run_cli, run_dirs

from mlxhydra.config.composition import compose
from mlxhydra.job.pipeline import prepare
from mlxhydra.job.validation import validate
from mlxhydra.load.tokenizer import load_tokenizer
from mlxhydra.tasks import TaskInput, run_task
from mlxhydra.tasks.model_card import _base_card, quantization_text

TEXTS = ["41+28=", "99-7=-", "hello world", "", "<s>1+1=</s>"]
HEADER = "---\nlanguage: en\nlibrary_name: mlx\npipeline_tag: text-generation\ntags:\n- mlx\n---\n"
VERSIONS = f"by mlxhydra {metadata.version('mlxhydra')} with mlx-lm {metadata.version('mlx-lm')}"
USE = ("## Use with mlx\n\n```bash\npip install mlx-lm\n```\n\n```python\n"
       "from mlx_lm import load, generate\n\nmodel, tokenizer = load('saved')\n"
       'response = generate(model, tokenizer, prompt="hello", verbose=True)\n```\n')


def save(model_dir: Path, target: Path, *overrides: str, record=None):
    """Compose, load and run task=save with the job's own stages; (metrics, model)."""
    cfg = compose([f"model={model_dir}", "task=save", f"task.path={target}", *overrides])
    settings = validate(cfg)
    model, report = prepare(cfg, settings)
    metrics = run_task(TaskInput(
        task=settings.task, seed=settings.seed, load=settings.load, model=model,
        model_config=report.model_config, model_dir=Path(settings.model_dir),
        run_dir=target.parent, record=record or {}))
    return metrics, model


def logits(model, tokens=(1, 25, 22, 16, 23, 29, 34)):
    return np.array(model(mx.array([list(tokens)])).astype(mx.float32))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """The embedded model saved at 4 bits through the Python API (no run record)."""
    target = tmp_path_factory.mktemp("save") / "saved"
    metrics, model = save(EMBEDDED_TINY, target, "quant.bits=4")
    return target, metrics, logits(model)


def test_the_tokenizer_is_saved_by_its_save_pretrained(saved_tiny, tmp_path):
    target, metrics, _ = saved_tiny
    assert metrics["tokenizer"] is True
    direct = tmp_path / "direct"
    load_tokenizer(EMBEDDED_TINY, json.loads((EMBEDDED_TINY / "config.json").read_text())
                   ).save_pretrained(str(direct))
    for p in direct.iterdir():
        assert (target / p.name).read_bytes() == p.read_bytes(), p.name
    # Not a copy of the source's files (transformers rewrites tokenizer_config.json).
    assert (target / "tokenizer_config.json").read_bytes() != (
        EMBEDDED_TINY / "tokenizer_config.json").read_bytes()
    assert metrics["files"] == sorted(["README.md", "accuracy.jsonl", "config.json", "eval.txt",
                                       "model.safetensors", "model.safetensors.index.json",
                                       *(p.name for p in direct.iterdir())])


def test_mlx_lm_loads_the_same_logits_and_tokenizer(saved_tiny):
    from mlx_lm import load as mlx_lm_load

    target, _, expected = saved_tiny
    model, tokenizer = mlx_lm_load(str(target))
    assert np.array_equal(logits(model), expected)
    source = load_tokenizer(EMBEDDED_TINY, json.loads((EMBEDDED_TINY / "config.json").read_text()))
    assert [tokenizer.encode(t) for t in TEXTS] == [source.encode(t) for t in TEXTS]
    assert tokenizer.encode("41+28=")[0] == source.bos_token_id == 1  # bos still added
    assert tokenizer.eos_token_ids == source.eos_token_ids
    ids = source.encode("12+34=46")
    assert tokenizer.decode(ids) == source.decode(ids)
    chat = [{"role": "user", "content": "1+1="}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == source.apply_chat_template(
        chat, tokenize=False)


def test_transformers_reads_the_saved_tokenizer_offline(saved_tiny, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target, _, _ = saved_tiny
    theirs = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    source = AutoTokenizer.from_pretrained(str(EMBEDDED_TINY), local_files_only=True)
    assert [theirs.encode(t) for t in TEXTS] == [source.encode(t) for t in TEXTS]
    assert (theirs.bos_token, theirs.eos_token) == (source.bos_token, source.eos_token)


def test_the_card_without_a_record_has_mlx_lms_metadata(saved_tiny, tmp_path):
    from huggingface_hub import ModelCard
    from mlx_lm.utils import create_model_card

    target, _, _ = saved_tiny
    assert (target / "README.md").read_text() == (
        HEADER + "# saved\n\nConverted to MLX format from the model directory `tiny` " + VERSIONS
        + ".\n\n## Quantization\n\nQuantized: 4 bits, group size 64, affine mode.\n\n" + USE)
    create_model_card(tmp_path, None)  # what mlx_lm.convert writes for a local directory
    assert ModelCard.load(target / "README.md").data.to_dict() == ModelCard.load(
        tmp_path / "README.md").data.to_dict()


def test_the_card_keeps_the_source_cards_metadata_and_names_the_hub_model(tmp_path):
    source = Path(shutil.copytree(EMBEDDED_TINY, tmp_path / "tiny"))
    (source / "README.md").write_text("---\nlicense: mit\ntags:\n- arithmetic\n---\n# Old text\n")
    record = {"hub": {"model": {"repo_id": "org/tiny", "revision": "main", "commit": "abc123",
                                "snapshot": str(source)}},
              "overrides": ["model=org/tiny", "task=save", "task.path='my dir'"],
              "versions": {"mlxhydra": "9.9", "mlx-lm": "8.8"},
              "quantization": {"source": "none", "quantized_layers": 0, "float_layers": 16,
                               "bits_per_weight": 16.0}}
    save(source, tmp_path / "saved", record=record)
    assert (tmp_path / "saved" / "README.md").read_text() == (
        "---\nlicense: mit\ntags:\n- arithmetic\n- mlx\nbase_model: org/tiny\nlibrary_name: mlx\n"
        "pipeline_tag: text-generation\n---\n# saved\n\n"
        "Converted to MLX format from [org/tiny](https://huggingface.co/org/tiny) (commit "
        "`abc123`) by mlxhydra 9.9 with mlx-lm 8.8.\n\n## Quantization\n\n"
        "None: the weights are floating point; 16.000 bits per weight (0 quantized and 16 float "
        "layers).\n\n## mlxhydra settings\n\nThe command's overrides (every other setting is "
        "mlxhydra's default):\n\n```bash\nmlxhydra model=org/tiny task=save 'task.path='\"'\"'my "
        "dir'\"'\"''\n```\n\n" + USE)


def test_a_readme_that_is_no_file_gives_a_new_card(tmp_path):
    (tmp_path / "README.md").mkdir()
    assert _base_card(tmp_path).data.to_dict() == {"language": "en"}


@pytest.mark.parametrize("applied, entry, text", [
    ({"source": "runtime", "method": "awq", "default": {"bits": 3, "group_size": 32, "mode": "affine"},
      "recipe": None, "rules": [{"pattern": "lm_head", "bits": 8}], "bits_per_weight": 3.6049,
      "quantized_layers": 16, "float_layers": 0}, {"bits": 3},
     "Quantized by mlxhydra while loading (method awq): 3 bits, group size 32, affine mode, "
     "1 per-layer rules; 3.605 bits per weight (16 quantized and 0 float layers)."),
    ({"source": "runtime", "method": "rtn", "default": None, "recipe": "mixed_3_6", "rules": []},
     {"bits": 3}, "Quantized by mlxhydra while loading (method rtn): recipe mixed_3_6."),
    ({"source": "pre-quantized", "settings": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
      "bits_per_weight": 4.25}, None,
     "As saved in the source: 4 bits, group size 32, mxfp4 mode; 4.250 bits per weight."),
    ({"source": "pre-quantized", "settings": {"method": "bitnet"}}, None,
     "As saved in the source: method bitnet."),
    ({}, None, "None: the weights are floating point."),
    ({}, {"bits": 8, "group_size": 64}, "Quantized: 8 bits, group size 64."),
    ({}, {"quant_method": "bitnet"}, "Quantized: see config.json."),
])
def test_quantization_text(applied, entry, text):
    assert quantization_text(applied, entry) == text


def test_a_model_without_a_tokenizer_is_saved_without_one(llama_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mlxhydra"):
        metrics, _ = save(llama_dir, tmp_path / "saved")
    assert metrics["tokenizer"] is False
    assert metrics["files"] == ["README.md", "config.json", "model.safetensors",
                                "model.safetensors.index.json"]
    assert f"save: {llama_dir} has no tokenizer; the saved model has none either" in caplog.messages


@pytest.mark.slow
def test_the_command_writes_its_settings_into_the_card(tmp_path):
    result = run_cli("quant=4bit", "task=save", "task.path=saved", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = read_run(run_dirs(tmp_path)[-1])
    bpw = record["quantization"]["bits_per_weight"]
    assert record["metrics"]["tokenizer"] is True and "README.md" in record["metrics"]["files"]
    assert (tmp_path / "saved" / "README.md").read_text() == (
        HEADER + "# saved\n\nConverted to MLX format from the model directory `tiny` " + VERSIONS
        + f".\n\n## Quantization\n\nQuantized by mlxhydra while loading (method rtn): 4 bits, "
        f"group size 64, affine mode; {bpw:.3f} bits per weight (16 quantized and 0 float "
        "layers).\n\n## mlxhydra settings\n\nThe command's overrides (every other setting is "
        "mlxhydra's default):\n\n```bash\nmlxhydra quant=4bit task=save task.path=saved\n```\n\n"
        + USE)
