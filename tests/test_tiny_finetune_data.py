"""The embedded model's fine-tuning demo data (scripts/tiny_finetune_data.py, mlxhydra/data/tiny_finetune/)."""

import importlib.util
import json
import re
import sys
import tomllib
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import tiny_data  # noqa: E402
import tiny_finetune_data  # noqa: E402

from mlxhydra.config.resolvers import data_file  # noqa: E402

SHIPPED = ROOT / "mlxhydra" / "data" / "tiny_finetune"
TINY = ROOT / "mlxhydra" / "models" / "tiny"
FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "accuracy.jsonl")
SPLITS = ("train", "valid", "test")
NEGATIVE = re.compile(r"(\d\d)-(\d\d)=(-\d\d)")  # the new skill
OWN = re.compile(r"(\d\d)[-+](\d\d)=(\d\d\d)")  # tiny's own kind, replayed


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def split_problems(name, pattern=NEGATIVE):
    """(prompt, answer) of the problems of one kind in a shipped split, in order."""
    out = []
    for row in read_jsonl(SHIPPED / f"{name}.jsonl"):
        assert list(row) == ["text"]
        for line in row["text"].split("\n"):
            assert NEGATIVE.fullmatch(line) or OWN.fullmatch(line), f"{name}: {line!r}"
            if pattern.fullmatch(line):
                out.append((line[:6], line[6:]))
    return out


def accuracy_problems():
    rows = read_jsonl(SHIPPED / "accuracy.jsonl")
    assert all(list(r) == ["prompt", "answer"] for r in rows)
    return [(r["prompt"], r["answer"]) for r in rows]


def tiny_training_prompts():
    """Every prompt tiny's own training stream can draw: 2-digit sums, differences with a >= b."""
    prompts = {f"{a:02d}+{b:02d}=" for a in range(100) for b in range(100)}
    prompts |= {f"{a:02d}-{b:02d}=" for a in range(100) for b in range(a + 1)}
    return prompts


def test_shipped_files_are_exactly_what_the_script_writes(tmp_path):
    tiny_finetune_data.write_all(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_counts():
    assert [len(read_jsonl(SHIPPED / f"{s}.jsonl")) for s in SPLITS] == [1350, 48, 48]
    negative = [len(split_problems(s)) for s in SPLITS]
    own = [len(split_problems(s, OWN)) for s in SPLITS]
    assert negative == [2675, 98, 92]
    assert [n + o for n, o in zip(negative, own)] == [4050, 144, 144]
    assert len(accuracy_problems()) == 400
    # Small enough to ship in the package.
    assert sum((SHIPPED / n).stat().st_size for n in FILES) == 78824


def test_every_answer_is_right():
    problems = accuracy_problems() + [p for s in SPLITS for p in split_problems(s)]
    for prompt, answer in problems:
        a, b = int(prompt[:2]), int(prompt[3:5])
        assert prompt == f"{a:02d}-{b:02d}=" and a < b, prompt
        assert answer == f"-{b - a:02d}" and int(answer) == a - b, (prompt, answer)
    for prompt, answer in [p for s in SPLITS for p in split_problems(s, OWN)]:
        a, op, b = int(prompt[:2]), prompt[2], int(prompt[3:5])
        assert (op == "+" or a >= b) and int(answer) == (a + b if op == "+" else a - b), prompt


def test_no_negative_difference_twice_nor_in_tiny_training():
    groups = {s: [p for p, _ in split_problems(s)] for s in SPLITS}
    groups["accuracy"] = [p for p, _ in accuracy_problems()]
    everything = [p for prompts in groups.values() for p in prompts]
    assert len(set(everything)) == len(everything) == 400 + 2675 + 98 + 92
    # The enumeration covers what tiny_data's generator really draws.
    stream = tiny_data.TrainStream()
    drawn = {stream.next_problem()[:6] for _ in range(5000)}
    assert drawn <= tiny_training_prompts()
    assert not set(everything) & tiny_training_prompts()
    assert not set(everything) & {p for p, _ in tiny_data.heldout()}


def test_replayed_problems_are_tiny_training_problems_never_its_heldout():
    replayed = {p for s in SPLITS for p, _ in split_problems(s, OWN)}
    assert len(replayed) > 1000
    assert replayed <= tiny_training_prompts()
    # tiny's own accuracy.jsonl and eval.txt still measure what it kept.
    assert not replayed & {p for p, _ in tiny_data.heldout()}


def test_mlx_lm_loads_the_splits_as_text_with_tiny_tokenizer():
    from mlx_lm.tuner.datasets import TextDataset, load_dataset
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(TINY)
    args = types.SimpleNamespace(data=str(SHIPPED), train=True, test=True, mask_prompt=False)
    sets = load_dataset(args, tokenizer)
    assert [type(s) for s in sets] == [TextDataset] * 3
    assert [len(s) for s in sets] == [1350, 48, 48]
    lengths = set()
    for name, dataset in zip(SPLITS, sets):
        for i, row in enumerate(read_jsonl(SHIPPED / f"{name}.jsonl")):
            tokens, offset = dataset.process(dataset[i])
            assert offset == 0
            # As tiny was trained: <s> problems joined by newlines </s>.
            assert tokens == [tiny_data.BOS_ID] + tiny_data.encode(row["text"]) + [tiny_data.EOS_ID]
            lengths.add(len(tokens))
    # Every row fills 31 of the 33 positions mlx-lm pads a batch to.
    assert lengths == {31}


def test_packaged_and_found_by_the_data_resolver():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = package_data["package-data"]["mlxhydra.data"]
    data_dir = ROOT / "mlxhydra" / "data"
    packaged = {p for pattern in patterns for p in data_dir.glob(pattern)}
    assert {SHIPPED / n for n in FILES} <= packaged
    # The installed package's copy (a non-editable install serves it from site-packages).
    installed = Path(importlib.util.find_spec("mlxhydra").origin).parent / "data" / "tiny_finetune"
    assert Path(data_file("tiny_finetune")) == installed
    assert {n: (installed / n).read_bytes() for n in FILES} == {n: (SHIPPED / n).read_bytes() for n in FILES}


def test_accuracy_file_reads_as_task_accuracy_data():
    from mlxhydra.load.data_files import read_jsonl as read_task_rows

    rows = read_task_rows(SHIPPED / "accuracy.jsonl", ("prompt", "answer"))
    expected = [{"prompt": p, "answer": a} for p, a in map(dict.values, tiny_finetune_data.accuracy_rows())]
    assert [n for n, _ in rows] == list(range(1, 401))
    assert [row for _, row in rows] == expected


def test_the_demo_preset_trains_tiny_on_the_shipped_data_and_validates():
    """+experiment=tiny_finetune: task=lora on the shipped directory, every setting valid before
    any weight is read (tiny's 2 layers, the schedule's length equal to the iterations)."""
    from mlxhydra.config.composition import compose
    from mlxhydra.job.validation import validate

    cfg = compose(["+experiment=tiny_finetune"])
    assert cfg.task.name == "lora" and cfg.task.data == data_file("tiny_finetune")
    assert cfg.task.num_layers == 2 and cfg.task.fine_tune_type == "full"
    assert list(cfg.task.lr_schedule.arguments)[1] == cfg.task.iters
    validate(cfg)
