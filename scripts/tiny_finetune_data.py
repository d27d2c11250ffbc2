"""Write the embedded model's fine-tuning demo: negative differences, a skill it lacks.

    python scripts/tiny_finetune_data.py [OUT_DIR]

The embedded ``tiny`` model adds and subtracts 2-digit numbers, but was only ever
shown differences that are not negative (``93-68=025``; ``scripts/tiny_data.py``).
Asked ``28-41=`` it answers ``093`` or the like: 0 of 400 held-out problems right.
This script writes a directory in mlx-lm's data format that teaches it
``28-41=-13`` (operands 0..99 with 2 digits, the first smaller than the second;
the answer is ``-`` and 2 digits), so the answer has the width of tiny's own:

- ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``: mlx-lm's ``text`` format,
  ``{"text": "28-41=-13\\n05-30=-25\\n95-97=-02"}``: PROBLEMS_PER_ROW problems a
  row, one a line, the shape of tiny's own training documents (the tokenizer adds
  ``<s>``, mlx-lm's ``TextDataset`` appends ``</s>``); 3 problems make 31 tokens,
  just under the 33 that mlx-lm pads each batch to. Not the ``completions``
  format: mlx-lm renders that through the chat template, which puts a newline
  between prompt and completion, and the model would learn to answer ``=\\n-13``;
- ``accuracy.jsonl``: held-out ``{"prompt": "28-41=", "answer": "-13"}`` lines for
  ``task=accuracy``.

Every problem appears once in the whole directory: the held-out problems come
first from their own seed, the splits are drawn after them from another seed, each
problem only once. None is one of tiny's own training problems (those have
``a >= b``). There are 4950 such problems; the directory uses 4738 of them. The
shipped directory (``mlxhydra/data/tiny_finetune/``) is this script's output.
"""

import argparse
import json
import random
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mlxhydra" / "data" / "tiny_finetune"

HELDOUT_SEED = 31337  # accuracy.jsonl
SPLIT_SEED = 2718  # train, valid, test
ROWS = {"train": 1350, "valid": 48, "test": 48}
PROBLEMS_PER_ROW = 3
N_ACCURACY = 400


def problem(rng: random.Random) -> Tuple[str, str]:
    """One (prompt, answer) pair with a negative difference, e.g. ("28-41=", "-13")."""
    while True:
        a, b = rng.randrange(100), rng.randrange(100)
        if a < b:
            return f"{a:02d}-{b:02d}=", f"-{b - a:02d}"


def distinct_problems(rng: random.Random, seen: set) -> Iterator[Tuple[str, str]]:
    """Problems from ``rng``, each prompt once and none in ``seen`` (which grows)."""
    while True:
        prompt, answer = problem(rng)
        if prompt not in seen:
            seen.add(prompt)
            yield prompt, answer


def accuracy_rows() -> List[Dict[str, str]]:
    """The held-out problems of accuracy.jsonl."""
    problems = distinct_problems(random.Random(HELDOUT_SEED), set())
    return [{"prompt": p, "answer": a} for p, a in islice(problems, N_ACCURACY)]


def split_rows() -> Dict[str, List[Dict[str, str]]]:
    """train, valid and test rows: ``{"text": ...}``, PROBLEMS_PER_ROW problems each."""
    seen = {row["prompt"] for row in accuracy_rows()}
    problems = distinct_problems(random.Random(SPLIT_SEED), seen)
    return {name: [{"text": "\n".join(p + a for p, a in islice(problems, PROBLEMS_PER_ROW))}
                   for _ in range(count)]
            for name, count in ROWS.items()}


def write_jsonl(path: Path, rows: List[Dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_all(out_dir: Path) -> None:
    """Write train/valid/test.jsonl and accuracy.jsonl into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in split_rows().items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    write_jsonl(out_dir / "accuracy.jsonl", accuracy_rows())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    out = p.parse_args().out
    write_all(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
