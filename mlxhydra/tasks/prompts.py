"""Prompts of ``task=generate`` and ``task=accuracy``: where they come from and how they are encoded.

A prompt is plain text or a list of chat messages. ``task.prompt`` (a string
or a list of strings), ``task.messages`` and ``task.prompt_file`` (one prompt
a line, or JSON lines with ``prompt`` or ``messages``) give one or several;
each is encoded as ``mlx_lm.generate`` encodes its prompt: through the chat
template (with the system prompt, the template's arguments and a prefilled
response) when there is one, else as plain text.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..config.checks import SettingsCheck
from ..errors import TaskError
from ..load.data_files import long_documents_allowed, read_jsonl, read_text

JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class PromptItem:
    """One prompt: plain text or chat messages, and where it came from."""

    source: str  # "task.prompt", "task.prompt_file line 3"...
    prompt: Optional[str] = None
    messages: Optional[List[Dict[str, Any]]] = None

    def shown(self) -> Any:
        """The prompt as the outputs record it."""
        return self.prompt if self.messages is None else self.messages


def unescape(text: str) -> str:
    r"""``\n`` and ``\t`` typed on the command line as newline and tab (as ``mlx_lm.generate``)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def messages_problem(messages: Any) -> Optional[str]:
    """What is wrong with a chat message list, or None."""
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and {"role", "content"} <= set(m)
        and isinstance(m["role"], str) and isinstance(m["content"], str) for m in messages
    ):
        return "expected a non-empty list of {role, content} items"
    return None


def read_prompt_file(value: str) -> List[PromptItem]:
    """The prompts of ``task.prompt_file``.

    A ``.jsonl``/``.json`` file holds one JSON object a line with ``prompt``
    (text) or ``messages`` (chat messages); any other file holds one prompt a
    non-blank line.

    Raises:
        TaskError: naming the file (and line) that cannot be used.
    """
    path = Path(value).expanduser().absolute()
    key = f"task.prompt_file={value}"
    if not path.is_file():
        raise TaskError(f"{key}: {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        if path.suffix in JSON_SUFFIXES:
            items = [_json_prompt(key, path, n, row) for n, row in read_jsonl(path, (), key)]
        else:
            items = [PromptItem(f"task.prompt_file line {n}", prompt=line)
                     for n, line in enumerate(read_text(path, key).splitlines(), 1)
                     if line.strip()]
    except OSError as e:
        raise TaskError(f"{key}: {path} cannot be read ({e})") from e
    if not items:
        raise TaskError(f"{key}: {path} holds no prompts")
    return items


def _json_prompt(key: str, path: Path, n: int, row: Any) -> PromptItem:
    """One JSON line of a prompt file: ``{"prompt": ...}`` or ``{"messages": [...]}``."""
    source = f"task.prompt_file line {n}"
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"]:
        return PromptItem(source, prompt=row["prompt"])
    if isinstance(row, dict) and "messages" in row and messages_problem(row["messages"]) is None:
        return PromptItem(source, messages=row["messages"])
    raise TaskError(f"{key}: {path} line {n}: expected an object with a non-empty "
                    '"prompt" string or "messages" [{role, content}, ...]')


def prompt_items(task: Mapping[str, Any]) -> List[PromptItem]:
    """Every prompt of a task: from ``prompt_file``, else ``messages``, else ``prompt``.

    Raises:
        TaskError: a prompt file that cannot be used.
    """
    if task.get("prompt_file") is not None:
        return read_prompt_file(task["prompt_file"])
    if task.get("messages") is not None:
        return [PromptItem("task.messages", messages=task["messages"])]
    prompt = task.get("prompt")
    if isinstance(prompt, list):
        return [PromptItem(f"task.prompt[{i}]", prompt=unescape(p)) for i, p in enumerate(prompt)]
    return [PromptItem("task.prompt", prompt=unescape(prompt))]


def chat_problems(task: Mapping[str, Any]) -> List[str]:
    """The chat settings shared with task=accuracy: chat, messages, system_prompt."""
    c = SettingsCheck(task)
    c.choice("chat", ("auto", True, False))
    messages = task.get("messages")
    if messages is not None:
        problem = messages_problem(messages)
        if problem:
            c.problems.append(f"task.messages: {problem}")
        elif task["chat"] is False:
            c.problems.append("task.messages needs task.chat=auto or true (a chat template)")
        elif task.get("system_prompt") is not None and messages[0].get("role") == "system":
            c.problems.append("task.system_prompt and a system message in task.messages: give one")
    system = task.get("system_prompt")
    if system is not None and not isinstance(system, str):
        c.fail("system_prompt", "a string or null")
    return c.problems


def prompt_problems(task: Mapping[str, Any]) -> List[str]:
    """Every prompt setting of task=generate (the prompt file is read now)."""
    c = SettingsCheck(task)
    c.problems += chat_problems(c.task)
    prompt = task.get("prompt")
    if task.get("messages") is None and task.get("prompt_file") is None and not (
        (isinstance(prompt, str) and prompt)
        or (isinstance(prompt, list) and prompt and all(isinstance(p, str) and p for p in prompt))
    ):
        c.fail("prompt", "a non-empty string or list of strings (or set task.messages or "
                         "task.prompt_file)")
    value = task.get("prompt_file")
    if value is not None:
        if not isinstance(value, str) or not value:
            c.fail("prompt_file", "a file path or null")
        else:
            try:
                read_prompt_file(value)
            except TaskError as e:
                c.problems.append(str(e))
    template = task.get("chat_template")
    if template is not None:
        if not isinstance(template, str) or not template:
            c.fail("chat_template", "a Jinja template, a template file, or null")
        elif not looks_like_template(template) and not Path(template).expanduser().is_file():
            c.problems.append(f"task.chat_template={template}: neither a Jinja template nor an "
                              "existing file")
    args = task.get("chat_template_args")
    if args is not None and not isinstance(args, dict):
        c.fail("chat_template_args", "a mapping of chat template arguments, e.g. "
                                     "{enable_thinking: false}, or null")
    prefill = task.get("prefill_response")
    if prefill is not None:
        if not isinstance(prefill, str):
            c.fail("prefill_response", "a string or null")
        elif task["chat"] is False:
            c.problems.append("task.prefill_response needs task.chat=auto or true (a chat template)")
    return c.problems


def looks_like_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def chat_template_text(value: Optional[str]) -> Optional[str]:
    """The template of ``task.chat_template``: the text itself, or the file's contents."""
    if value is None or looks_like_template(value):
        return value
    return read_text(Path(value).expanduser().absolute(), f"task.chat_template={value}")


def encode_prompt(tokenizer, task: Mapping[str, Any], item: PromptItem) -> List[int]:
    """The prompt's tokens, as ``mlx_lm.generate`` makes them.

    ``chat: auto`` applies the tokenizer's chat template when it has one;
    ``true`` requires one; ``false`` encodes the text with the tokenizer's
    special tokens. Messages always need a template. Through the template, the
    system prompt comes first and ``prefill_response`` starts the reply.

    Raises:
        TaskError: a chat template required but absent.
    """
    chat, prefill = task["chat"], task.get("prefill_response")
    if item.messages is not None:
        use_chat = True
    else:
        use_chat = tokenizer.has_chat_template if chat == "auto" else chat is True
    if use_chat and not tokenizer.has_chat_template:
        what = "task.messages" if item.messages is not None else "task.chat=true"
        raise TaskError(f"{what}: the model's tokenizer has no chat template "
                        "(set task.chat_template)")
    if not use_chat:
        if prefill is not None:
            raise TaskError("task.prefill_response: the model's tokenizer has no chat template "
                            "(set task.chat_template)")
        return list(tokenizer.encode(item.prompt))
    system = task.get("system_prompt")
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    if item.messages is not None:
        messages += item.messages
    else:
        messages.append({"role": "user", "content": item.prompt})
    if prefill is not None:
        messages.append({"role": "assistant", "content": prefill})
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, continue_final_message=prefill is not None,
        add_generation_prompt=prefill is None, **(task.get("chat_template_args") or {}),
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def context_length(config: Mapping[str, Any]) -> Optional[Tuple[int, str]]:
    """The model's context in tokens and where it comes from, or None when the config has none.

    ``max_position_embeddings`` (or its ``text_config``'s), times ``rope_scaling.factor``
    when the config extends it (YaRN, linear, dynamic scaling): a bound, never too small.
    """
    for prefix, node in (("model", config), ("model.text_config", config.get("text_config"))):
        n = node.get("max_position_embeddings") if isinstance(node, Mapping) else None
        if type(n) is not int or n < 1:
            continue
        scaling = node.get("rope_scaling")
        factor = scaling.get("factor") if isinstance(scaling, Mapping) else None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1:
            return int(n * factor), f"{prefix}.max_position_embeddings={n} x rope_scaling.factor={factor}"
        return n, f"{prefix}.max_position_embeddings={n}"
    return None


def _longest_token(tokenizer) -> Optional[int]:
    """The most characters one token of the vocabulary stands for (None: unknown)."""
    try:
        return max(map(len, tokenizer.get_vocab()), default=None)
    except (AttributeError, TypeError, NotImplementedError):
        return None


def prompt_length_problems(task: Mapping[str, Any], tokenizer, context: Optional[Tuple[int, str]]) -> List[str]:
    """Prompts longer than the model's context, each named (refused, never truncated).

    A prompt with more characters than the context times the longest token of
    the vocabulary cannot fit, and is refused before it is tokenized (a
    many-megabyte prompt would take long to tokenize and for ever to run); the
    others are refused when their tokens (through the chat template) are more
    than the context.
    """
    if context is None:
        return []
    limit, origin = context
    longest = _longest_token(tokenizer)
    problems = []
    for item in prompt_items(task):
        where = item.source
        if task.get("prompt_file") is not None:
            where = where.replace("task.prompt_file", f"task.prompt_file={task['prompt_file']}", 1)
        texts = [item.prompt] if item.messages is None else [m["content"] for m in item.messages]
        chars = sum(map(len, texts))
        if longest and chars > limit * longest and sum(len("".join(t.split())) for t in texts) > limit * longest:
            problems.append(f"{where}: {chars} characters, more than the model's context of {limit} "
                            f"tokens can hold ({origin}; no token is longer than {longest} "
                            "characters): shorten it")
            continue
        try:
            with long_documents_allowed():  # transformers' warning: the length is judged here
                tokens = len(encode_prompt(tokenizer, task, item))
        except TaskError:  # no chat template...: named when the task runs
            continue
        if tokens > limit:
            problems.append(f"{where}: {tokens} tokens, more than the model's context of {limit} "
                            f"tokens ({origin}): shorten it")
    return problems
