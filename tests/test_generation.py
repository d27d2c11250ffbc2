"""task=generate's mlx-lm options, and the KV-cache options of perplexity and kl.

The embedded tiny model (trained on "41+28=069" lines) generates; a random
llama with the same tokenizer is the draft model of speculative decoding.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs

from mlxhydra.config.composition import compose
from mlxhydra.config.overrides import parse_overrides
from mlxhydra.errors import ConfigError, TaskError
from mlxhydra.job.pipeline import prepare
from mlxhydra.job.validation import validate
from mlxhydra.load.tokenizer import load_tokenizer
from mlxhydra.tasks import TaskInput, run_task
from mlxhydra.tasks.kv_cache import ThroughCache
from mlxhydra.tasks.prompts import PromptItem, encode_prompt

PROMPT = "task.prompt='41+28='"


@pytest.fixture(scope="module")
def tiny():
    """The embedded model, loaded once: (model, report)."""
    cfg = compose(["model=tiny"])
    return prepare(cfg, validate(cfg))


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory) -> Path:
    """A random llama with the tiny model's vocabulary and tokenizer."""
    d = make_model(tmp_path_factory.mktemp("draft") / "draft", vocab_size=128, hidden_size=32,
                   intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, seed=7)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_TINY / name, d / name)
    return d


def generate(tiny, run_dir: Path, *overrides: str):
    """Run task=generate on the loaded tiny model with the job's own stages."""
    cfg = compose(["model=tiny", "task=generate", "task.stream=false", *overrides])
    settings = validate(cfg)
    model, report = tiny
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_task(TaskInput(task=settings.task, seed=settings.seed, load=settings.load,
                              model=model, model_config=report.model_config,
                              model_dir=Path(settings.model_dir), run_dir=run_dir))


def test_speculative_decoding_gives_the_same_greedy_text(tiny, draft_dir, tmp_path):
    plain = generate(tiny, tmp_path / "a", PROMPT, "task.max_tokens=24")
    for draft in (str(draft_dir), "tiny"):  # a weak draft (rejections) and a perfect one (a preset)
        out = generate(tiny, tmp_path / draft.replace("/", "_"), PROMPT, "task.max_tokens=24",
                       f"task.draft_model={draft}", "task.num_draft_tokens=3")
        assert out["text"] == plain["text"] and out["generation_tokens"] == plain["generation_tokens"]
        assert 0 <= out["draft_tokens_accepted"] < out["generation_tokens"]
        assert out["draft_model"]["model_dir"] in (str(draft_dir), str(EMBEDDED_TINY))
    assert out["draft_tokens_accepted"] > 0  # tiny drafting for itself is always right


def test_stop_strings_and_extra_eos_tokens_end_the_text(tiny, tmp_path):
    full = generate(tiny, tmp_path / "full", PROMPT, "task.max_tokens=24")
    assert full["finish_reason"] == "length" and "\n" in full["text"] and "=" in full["text"]
    newline = generate(tiny, tmp_path / "nl", PROMPT, "task.max_tokens=24", r"task.stop='\n'")
    cut = full["text"][:full["text"].index("\n")]
    assert (newline["text"], newline["finish_reason"]) == (cut, "stop")
    several = generate(tiny, tmp_path / "two", PROMPT, "task.max_tokens=24", "task.stop=['=','\\n']")
    assert several["text"] == cut  # the first of either
    eos = generate(tiny, tmp_path / "eos", PROMPT, "task.max_tokens=24", "task.extra_eos_token='='")
    assert eos["text"] == full["text"][:full["text"].index("=")] and eos["finish_reason"] == "stop"


def test_streamed_pieces_add_up_to_the_text_and_never_show_a_stop_string(tiny):
    from mlx_lm.sample_utils import make_sampler

    from mlxhydra.tasks.generation import Generation, generate_text

    model, report = tiny
    tokenizer = load_tokenizer(EMBEDDED_TINY, report.model_config)
    prompt = tokenizer.encode("41+28=")
    pieces = []
    out = generate_text(model, tokenizer, prompt, Generation(
        max_tokens=40, sampler=make_sampler(0.0), stop=["+7"], on_text=pieces.append))
    assert "".join(pieces) == out["text"] and "+7" not in "".join(pieces)


def test_several_prompts_give_one_result_each(tiny, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("41+28=\n\n12+07=\n93-68=\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"prompt": "41+28="}) + "\n" +
                     json.dumps({"messages": [{"role": "user", "content": "12+07="}]}) + "\n")
    singles = [generate(tiny, tmp_path / p, f"task.prompt='{p}'", "task.max_tokens=6")["text"]
               for p in ("41+28=", "12+07=", "93-68=")]
    from_lines = generate(tiny, tmp_path / "lines", f"task.prompt_file={lines}", "task.max_tokens=6")
    assert from_lines["prompts"] == 3 and "text" not in from_lines
    assert [r["text"] for r in from_lines["results"]] == singles
    assert [r["source"] for r in from_lines["results"]] == [
        "task.prompt_file line 1", "task.prompt_file line 3", "task.prompt_file line 4"]
    assert from_lines["generation_tokens"] == sum(r["generation_tokens"] for r in from_lines["results"])
    written = [json.loads(x) for x in (tmp_path / "lines" / "generations.jsonl").read_text().splitlines()]
    assert written == from_lines["results"]
    from_json = generate(tiny, tmp_path / "json", f"task.prompt_file={jsonl}", "task.max_tokens=6")
    # The tiny chat template is "<s>" + content: the same tokens as the plain prompt.
    assert [r["text"] for r in from_json["results"]] == singles[:2]
    as_list = generate(tiny, tmp_path / "list", "task.prompt=['41+28=','93-68=']", "task.max_tokens=6")
    assert [r["text"] for r in as_list["results"]] == [singles[0], singles[2]]


def test_chat_template_arguments_system_prompt_and_prefill(tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
        "{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}")
    tokenizer = load_tokenizer(EMBEDDED_TINY, chat_template=template.read_text())
    task = {"chat": "auto", "system_prompt": "be brief", "chat_template_args": {"enable_thinking": False}}
    item = PromptItem("task.messages", messages=[{"role": "user", "content": "1+1="}])
    expected = "[system]be brief[user]1+1=[assistant][no-think]"
    assert encode_prompt(tokenizer, task, item) == tokenizer.encode(expected, add_special_tokens=False)
    prefilled = encode_prompt(tokenizer, {**task, "prefill_response": "00"}, item)
    # continue_final_message: the text ends with the prefilled reply, which the model continues.
    assert prefilled == tokenizer.encode("[system]be brief[user]1+1=[assistant]00",
                                         add_special_tokens=False)
    plain = load_tokenizer(EMBEDDED_TINY)
    with pytest.raises(TaskError, match="task.prefill_response: the model's tokenizer has no chat"):
        encode_prompt(plain, {"chat": False, "prefill_response": "0"}, PromptItem("p", prompt="1"))


def test_kv_quantization_costs_more_at_fewer_bits(tiny, tmp_path):
    model, report = tiny
    common = ["model=tiny", "task=kl", "task.num_samples=2", "task.sequence_length=64",
              f"task.cache_dir={tmp_path}", "task.kv_group_size=32"]
    kl = {}
    for bits in (None, 8, 4):
        cfg = compose(common + ([f"task.kv_bits={bits}"] if bits else []))
        settings = validate(cfg)
        kl[bits] = run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                                      model_config=report.model_config, model_dir=EMBEDDED_TINY,
                                      run_dir=tmp_path))["kl_mean"]
    assert kl[None] == 0.0 < kl[8] < kl[4]
    # Without quantization, the row fed through the cache gives the model's own logits.
    tokens = mx.array([list(range(1, 60))])
    np.testing.assert_allclose(
        np.array(ThroughCache(model, {"prefill_step_size": 7})(tokens).astype(mx.float32)),
        np.array(model(tokens).astype(mx.float32)), rtol=1e-4, atol=1e-4)


def test_perplexity_with_kv_bits_and_unusable_kv_settings(tiny, tmp_path):
    model, report = tiny

    def perplexity(*overrides):
        cfg = compose(["model=tiny", "task=perplexity", "task.num_samples=2", *overrides])
        settings = validate(cfg)
        return run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                                  model_config=report.model_config, model_dir=EMBEDDED_TINY,
                                  run_dir=tmp_path))["perplexity"]

    assert perplexity("task.kv_bits=2", "task.kv_group_size=32") > perplexity()
    with pytest.raises(TaskError, match="task.kv_group_size=64: this model's KV cache has head size 32"):
        perplexity("task.kv_bits=4")  # tiny's head dimension is 32
    with pytest.raises(TaskError, match="task.max_kv_size=16: mlx_lm.models.llama makes its own"):
        perplexity("task.max_kv_size=16")


HEAD_32 = ("task.kv_group_size=64: this model's KV cache has head size 32, not a multiple of 64 "
           "(mx.quantize quantizes each head's vectors in groups); set task.kv_group_size=32")


@pytest.mark.parametrize("name", ["generate", "perplexity", "kl"])
def test_a_kv_group_size_the_head_size_cannot_serve_is_refused_by_every_task(tiny, tmp_path, name):
    """tiny's heads have 32 values: groups of 64 cannot quantize them. generate's default
    quantized_kv_start (5000) is never reached by a short prompt, and still it is refused,
    before any token is computed (no generation, no KL reference)."""
    cfg = compose(["model=tiny", f"task={name}", "task.kv_bits=4", "task.kv_group_size=64",
                   "task.num_samples=2" if name != "generate" else PROMPT,
                   *([f"task.cache_dir={tmp_path / 'kl'}"] if name == "kl" else [])])
    settings = validate(cfg)
    model, report = tiny
    with pytest.raises(TaskError) as e:
        run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                           model_config=report.model_config, model_dir=EMBEDDED_TINY, run_dir=tmp_path))
    assert str(e.value) == HEAD_32
    assert not (tmp_path / "generations.jsonl").exists() and not (tmp_path / "kl").exists()


def test_a_kv_group_size_equal_to_the_head_size_quantizes_the_cache(tiny, tmp_path):
    plain = generate(tiny, tmp_path / "plain", PROMPT, "task.max_tokens=8")
    quantized = generate(tiny, tmp_path / "q", PROMPT, "task.max_tokens=8", "task.kv_bits=8",
                         "task.kv_group_size=32", "task.quantized_kv_start=0")
    assert quantized["generation_tokens"] == 8  # through an 8-bit cache from the first token
    # kv_bits=null: the group size is not used, and not checked
    assert generate(tiny, tmp_path / "off", PROMPT, "task.max_tokens=8",
                    "task.kv_group_size=64")["text"] == plain["text"]


def test_a_kv_cache_mlx_lm_cannot_quantize_is_refused_by_generate_too(tmp_path):
    """gemma3's sliding-window layers keep a rotating cache, which mlx-lm cannot quantize."""
    model_dir = make_model(tmp_path / "gemma", "gemma3_text", vocab_size=128)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_TINY / name, model_dir / name)
    cfg = compose([f"model={model_dir}", "task=generate", PROMPT, "task.kv_bits=4",
                   "task.kv_group_size=32", "task.max_tokens=4"])
    settings = validate(cfg)
    model, report = prepare(cfg, settings)
    with pytest.raises(TaskError) as e:
        run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                           model_config=report.model_config, model_dir=model_dir, run_dir=tmp_path))
    assert str(e.value) == ("task.kv_bits=4: this model's KV cache cannot be quantized by mlx-lm "
                            "(RotatingKVCache Quantization NYI)")


def test_bad_generation_settings_are_listed_together(tmp_path):
    cfg = compose(["model=tiny", "task=generate", "task.kv_bits=7", "task.kv_group_size=48",
                   "task.stop=[1]", "task.draft_model=nope", f"task.prompt_file={tmp_path}/none.txt",
                   "task.xtc_probability=2.0", "task.chat=false", "task.prefill_response=x"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    problems = e.value.problems
    assert "task.kv_bits=7: expected one of 2, 3, 4, 5, 6, 8, or null (no KV-cache quantization)" in problems
    assert "task.kv_group_size=48: expected one of 32, 64, 128" in problems
    assert "task.stop=[1]: expected a non-empty string, a list of them, or []" in problems
    assert any(p.startswith("task.draft_model=nope: not a model directory, a preset") for p in problems)
    assert f"task.prompt_file={tmp_path}/none.txt: {tmp_path}/none.txt does not exist" in problems
    assert "task.xtc_probability=2.0: expected 0..1 (0: off)" in problems
    assert "task.prefill_response needs task.chat=auto or true (a chat template)" in problems
    assert len(problems) == 7


def test_prompt_and_chat_template_files_that_are_not_utf8_are_named(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"41+28=\n\x93quoted\x94\n")  # Windows-1252 quotes
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", f"task.prompt_file={prompts}"]))
    assert e.value.problems == [
        f"task.prompt_file={prompts}: {prompts} is not UTF-8 text (byte 0x93 at offset 7, line 2)"]
    template = tmp_path / "chat.jinja"
    template.write_bytes(b"{{ messages[0]['content'] }}\xa0")
    with pytest.raises(TaskError) as e:
        generate(tiny, tmp_path / "run", PROMPT, f"task.chat_template={template}")
    assert str(e.value) == (f"task.chat_template={template}: {template} is not UTF-8 text "
                            "(byte 0xa0 at offset 28, line 1)")


def test_documented_forms_of_prompts_hydra_would_reject():
    # docs/tasks.md: quote the value for Hydra inside quotes for the shell.
    values = [o.value for o in parse_overrides(
        ["task.prompt=\"What's 2+2?\"", "task.prompt='Hello, world'", "task.prompt='a=b: [c]'"],
        strict=True)]
    assert values == ["What's 2+2?", "Hello, world", "a=b: [c]"]


def test_a_bad_prompt_file_line_is_named(tmp_path):
    from mlxhydra.tasks.prompts import read_prompt_file

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n\n{"text": "2+2="}\n')
    with pytest.raises(TaskError, match=rf"task.prompt_file={bad}: {bad} line 3: expected an object"):
        read_prompt_file(str(bad))
    bad.write_text('{"prompt": "1+1="}\n{oops\n')
    with pytest.raises(TaskError, match=rf"{bad} line 2: invalid JSON"):
        read_prompt_file(str(bad))


# ---------------------------------------------------------------- the draft model's vocabulary

def tiny_tokenizer_draft(directory: Path, vocab_size: int, extra_token: bool = False) -> Path:
    """A random llama with the tiny model's tokenizer (100 tokens) and ``vocab_size`` token ids;
    ``extra_token``: its tokenizer has one token more (another vocabulary)."""
    d = make_model(directory, vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                   num_attention_heads=2, num_key_value_heads=1, seed=7)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_TINY / name, d / name)
    if extra_token:
        spec = json.loads((d / "tokenizer.json").read_text())
        spec["model"]["vocab"]["zz"] = max(spec["model"]["vocab"].values()) + 1
        (d / "tokenizer.json").write_text(json.dumps(spec))
    return d


VOCAB = "(speculative decoding needs the same vocabulary)"


@pytest.mark.parametrize("vocab_size, extra_token, says", [
    (256, False, "the draft model has 256 token ids, the model only 128: it would propose ids the "
                 f"model does not have {VOCAB}"),
    (64, False, "the draft model has 64 token ids, fewer than the tokenizer's 100 tokens: it cannot "
                f"read every token the model generates {VOCAB}"),
    (128, True, f"its tokenizer has 101 tokens, the model's 100 {VOCAB}"),  # mlx-lm's own condition
])
def test_a_draft_model_of_another_vocabulary_is_refused_before_loading(tmp_path, monkeypatch,
                                                                       vocab_size, extra_token, says):
    from mlxhydra.load import loader

    draft = tiny_tokenizer_draft(tmp_path / "draft", vocab_size, extra_token)
    monkeypatch.setattr(loader, "build_model", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", PROMPT, f"task.draft_model={draft}"]))
    assert e.value.problems == [f"task.draft_model={draft}: {says}"]


def test_a_draft_with_as_many_ids_as_tokens_drafts_and_the_built_models_are_compared(tiny, tmp_path):
    """100 ids for the tokenizer's 100 tokens, under the model's 128: fewer padding rows than the
    model, as Qwen2.5-0.5B drafting for Qwen2.5-7B. The loaded models' logits are compared too."""
    from mlxhydra.load.tokenizer import load_tokenizer
    from mlxhydra.tasks.draft import load_draft_model

    plain = generate(tiny, tmp_path / "plain", PROMPT, "task.max_tokens=12")
    draft = tiny_tokenizer_draft(tmp_path / "draft", 100)
    out = generate(tiny, tmp_path / "draft_run", PROMPT, "task.max_tokens=12",
                   f"task.draft_model={draft}")
    assert out["text"] == plain["text"] and out["draft_model"]["model_dir"] == str(draft)
    wide = tiny_tokenizer_draft(tmp_path / "wide", 256)
    tokenizer = load_tokenizer(EMBEDDED_TINY)
    with pytest.raises(TaskError) as e:  # what the validate stage read from the configs, on the models
        load_draft_model(str(wide), {}, tokenizer, tiny[0])
    assert str(e.value) == (f"task.draft_model={wide}: the draft model has 256 token ids, the model "
                            f"only 128: it would propose ids the model does not have {VOCAB}")


# ---------------------------------------------------------------- prompts and the model's context

CONTEXT = "more than the model's context of 512 tokens"


def test_a_prompt_longer_than_the_context_is_refused_and_one_that_fills_it_runs(tiny, tmp_path):
    """tiny: 512 positions; its chat template adds <s>, one token per character."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1" * 511 + "\n" + "1" * 512 + "\n")
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", f"task.prompt_file={prompts}"]))
    assert e.value.problems == [f"task.prompt_file={prompts} line 2: 513 tokens, {CONTEXT} "
                                "(model.max_position_embeddings=512): shorten it"]
    prompts.write_text("1" * 511 + "\n")
    out = generate(tiny, tmp_path / "full", f"task.prompt_file={prompts}", "task.max_tokens=1")
    assert out["prompt_tokens"] == 512
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", f"task.prompt=['1+1=','{'2' * 600}']"]))
    assert e.value.problems == [f"task.prompt[1]: 601 tokens, {CONTEXT} "
                                "(model.max_position_embeddings=512): shorten it"]


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(tmp_path, monkeypatch):
    """512 tokens of at most 5 characters (tiny's longest token, '<pad>'): 2561 cannot fit."""
    from mlxhydra.tasks import prompts as prompts_module

    def no_encoding(*args, **kwargs):
        raise AssertionError("a prompt that cannot fit was tokenized")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("7" * 2561 + "\n")
    monkeypatch.setattr(prompts_module, "encode_prompt", no_encoding)
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", f"task.prompt_file={prompts}"]))
    assert e.value.problems == [
        f"task.prompt_file={prompts} line 1: 2561 characters, more than the model's context of 512 "
        "tokens can hold (model.max_position_embeddings=512; no token is longer than 5 "
        "characters): shorten it"]
    monkeypatch.undo()
    prompts.write_text("7" * 2560 + "\n")  # could fit by its length: tokenized, then refused
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", "task=generate", f"task.prompt_file={prompts}"]))
    assert e.value.problems == [f"task.prompt_file={prompts} line 1: 2561 tokens, {CONTEXT} "
                                "(model.max_position_embeddings=512): shorten it"]


def test_without_a_known_context_no_prompt_is_refused_for_its_length(tmp_path):
    from mlxhydra.tasks.prompts import context_length

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1" * 600 + "\n")
    validate(compose(["model=tiny", "task=generate", f"task.prompt_file={prompts}",
                      "~model.max_position_embeddings"]))  # no error: nothing to bound it by
    assert context_length({}) is None
    assert context_length({"max_position_embeddings": 512, "rope_scaling": {"factor": 4.0}}) == (
        2048, "model.max_position_embeddings=512 x rope_scaling.factor=4.0")
    assert context_length({"text_config": {"max_position_embeddings": 8}}) == (
        8, "model.text_config.max_position_embeddings=8")


@pytest.mark.slow
def test_cli_a_draft_of_another_vocabulary_and_a_prompt_past_the_context_fail_before_loading(tmp_path):
    draft = tiny_tokenizer_draft(tmp_path / "draft", 256)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1" * 512 + "\n")
    for n, (args, message) in enumerate((
        ([f"task.draft_model={draft}"], f"task.draft_model={draft}: the draft model has 256 token "
                                        f"ids, the model only 128: it would propose ids the model "
                                        f"does not have {VOCAB}"),
        ([f"task.prompt_file={prompts}"], f"task.prompt_file={prompts} line 1: 513 tokens, {CONTEXT} "
                                          "(model.max_position_embeddings=512): shorten it"),
    )):
        cwd = tmp_path / str(n)
        cwd.mkdir()
        result = run_cli("task=generate", *args, cwd=cwd)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert [ln for ln in result.stderr.splitlines() if "run failed" not in ln] == [message]
        record = read_run(run_dirs(cwd)[0])
        assert (record["status"], record["error"], record["error_type"]) == ("failed", message, "ConfigError")
        assert "weight_files" not in record  # refused before any weight was read
