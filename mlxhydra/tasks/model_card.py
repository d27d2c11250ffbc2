"""The model card (README.md) that task=save writes, as ``mlx_lm.convert`` does, with mlxhydra's provenance.

mlx-lm's ``create_model_card(path, hf_path)`` loads the source's card from the
Hub by its id (a download) and leaves the text empty; mlxhydra runs offline and
knows more. The card here has the same metadata (``library_name: mlx``,
``pipeline_tag: text-generation``, the ``mlx`` tag, ``base_model`` for a Hub
model, so ``mlx_lm.upload`` reads it as its own), starts from the source
directory's README.md when it has one (its license and other metadata kept,
its text replaced, as mlx-lm does), and says in its text where the model came
from, how it was quantized and with which mlxhydra settings.
"""

import logging
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any, List, Mapping, Optional

from ..file_checks import regular_file_problem

log = logging.getLogger("mlxhydra")

CARD = "README.md"


def _version(record: Mapping[str, Any], package: str) -> str:
    recorded = (record.get("versions") or {}).get(package)
    if recorded:
        return str(recorded)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def source_line(model_dir: Path, record: Mapping[str, Any]) -> str:
    """Where the model came from: its Hub id and commit, or its directory's name."""
    hub = (record.get("hub") or {}).get("model") or {}
    versions = (f"by mlxhydra {_version(record, 'mlxhydra')} with mlx-lm "
                f"{_version(record, 'mlx-lm')}")
    if hub.get("repo_id"):
        repo = hub["repo_id"]
        commit = f" (commit `{hub['commit']}`)" if hub.get("commit") else ""
        return f"Converted to MLX format from [{repo}](https://huggingface.co/{repo}){commit} {versions}."
    return f"Converted to MLX format from the model directory `{Path(model_dir).name}` {versions}."


def _settings(params: Optional[Mapping[str, Any]]) -> List[str]:
    if not params:
        return []
    return [f"{params['bits']} bits" if params.get("bits") is not None else "",
            f"group size {params['group_size']}" if params.get("group_size") is not None else "",
            f"{params['mode']} mode" if params.get("mode") else ""]


def quantization_text(applied: Mapping[str, Any], entry: Optional[Mapping[str, Any]]) -> str:
    """One paragraph: how the saved weights are quantized.

    Args:
        applied: The job's quantization summary (run.json's ``quantization``; may be empty).
        entry: config.json's ``quantization`` entry (None: float weights).
    """
    source = applied.get("source") or ("none" if not entry else "")
    if source == "none":
        text = "None: the weights are floating point"
    elif source == "runtime":
        parts = _settings(applied.get("default")) + [
            f"recipe {applied['recipe']}" if applied.get("recipe") else "",
            f"{len(applied['rules'])} per-layer rules" if applied.get("rules") else ""]
        text = (f"Quantized by mlxhydra while loading (method {applied.get('method') or 'rtn'}): "
                + ", ".join(p for p in parts if p))
    elif source == "pre-quantized":
        saved = applied.get("settings") or entry or {}
        parts = _settings(saved) + ([f"method {saved['method']}"] if saved.get("method") else [])
        text = "As saved in the source: " + (", ".join(p for p in parts if p) or "quantized")
    else:  # no summary (the Python API): config.json's entry
        text = "Quantized: " + (", ".join(p for p in _settings(entry) if p) or "see config.json")
    bpw = applied.get("bits_per_weight")
    if bpw is not None:
        text += f"; {bpw:.3f} bits per weight"
    if applied.get("quantized_layers") is not None:
        text += (f" ({applied['quantized_layers']} quantized and "
                 f"{applied.get('float_layers', 0)} float layers)")
    return text + "."


def card_text(name: str, model_dir: Path, model_config: Mapping[str, Any],
              record: Mapping[str, Any]) -> str:
    """The card's Markdown text (below its metadata)."""
    lines = [f"# {name}", "", source_line(model_dir, record), "", "## Quantization", "",
             quantization_text(record.get("quantization") or {}, model_config.get("quantization")), ""]
    overrides = record.get("overrides")
    if isinstance(overrides, list):
        lines += ["## mlxhydra settings", "", "The command's overrides (every other setting is "
                  "mlxhydra's default):", "", "```bash",
                  shlex.join(["mlxhydra", *(str(o) for o in overrides)]), "```", ""]
    lines += ["## Use with mlx", "", "```bash", "pip install mlx-lm", "```", "", "```python",
              "from mlx_lm import load, generate", "", f"model, tokenizer = load({name!r})",
              'response = generate(model, tokenizer, prompt="hello", verbose=True)', "```", ""]
    return "\n".join(lines)


def _base_card(model_dir: Path) -> Any:
    """The source directory's card (its metadata kept) or mlx-lm's template card."""
    from huggingface_hub import ModelCard, ModelCardData

    source = Path(model_dir) / CARD
    if not regular_file_problem(source):
        try:
            return ModelCard.load(source, ignore_metadata_errors=True)
        except Exception as e:  # a card that cannot be read: a new one, as for a directory without
            log.warning("save: %s is not a model card (%s); writing a new one", source, e)
    return ModelCard.from_template(ModelCardData(language="en"))


def write_model_card(target: Path, name: str, model_dir: Path, model_config: Mapping[str, Any],
                     record: Mapping[str, Any]) -> None:
    """Write ``target/README.md`` (see the module doc)."""
    card = _base_card(model_dir)
    card.data.library_name = "mlx"
    card.data.pipeline_tag = "text-generation"
    tags = list(card.data.tags or [])
    card.data.tags = tags if "mlx" in tags else [*tags, "mlx"]
    repo_id = ((record.get("hub") or {}).get("model") or {}).get("repo_id")
    if repo_id:
        card.data.base_model = repo_id
    card.text = card_text(name, model_dir, model_config, record)
    card.save(Path(target) / CARD)
