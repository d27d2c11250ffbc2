"""Write the embedded model's fine-tuning demo: negative differences, a skill it lacks.

    python scripts/tiny_finetune_data.py [OUT_DIR]

The embedded ``tiny`` model adds and subtracts 2-digit numbers, but was only ever
shown differences that are not negative (``93-68=025``; ``scripts/tiny_data.py``).
Asked ``28-41=`` it answers ``093`` or the like: 0 of 400 held-out problems right.
This script writes a directory in mlx-lm's data format that teaches it
``28-41=-13`` (operands 0..99 with 2 digits, the first smaller than the second;
the answer is ``-`` and 2 digits), so the answer has the width of tiny's own:

- ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``: mlx-lm's ``text`` format,
  ``{"text": "28-41=-13\\n61+33=094\\n95-97=-02"}``: PROBLEMS_PER_ROW problems a
  row, one a line; each is one of tiny's own kind (drawn as its training draws
  them, its held-out problems excluded) with probability REPLAY_SHARE, else a
  negative difference. Without the old kind the model forgets it: trained on
  negative differences alone it answers ``16+99=`` with ``-93``. The rows have
  the shape of tiny's own training documents (the tokenizer adds ``<s>``,
  mlx-lm's ``TextDataset`` appends ``</s>``); 3 problems make 31 tokens, just
  under the 33 that mlx-lm pads each batch to. Not the ``completions``
  format: mlx-lm renders that through the chat template, which puts a newline
  between prompt and completion, and the model would learn to answer ``=\\n-13``;
- ``accuracy.jsonl``: held-out ``{"prompt": "28-41=", "answer": "-13"}`` lines for
  ``task=accuracy``.

Every negative difference appears once in the whole directory: the held-out
problems come first from their own seed, the splits are drawn after them from
another seed, each problem only once. None is one of tiny's own training problems
(those have ``a >= b``); of the 4950 there are, the directory uses 3265. The
shipped directory (``mlxhydra/data/tiny_finetune/``) is this script's output.
"""

import argparse
import json
import random
import sys
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_data  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mlxhydra" / "data" / "tiny_finetune"

HELDOUT_SEED = 31337  # accuracy.jsonl
SPLIT_SEED = 2718  # train, valid, test
REPLAY_SEED = 1618  # tiny's own kind of problem in the rows
REPLAY_SHARE = 1 / 3
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
    rng = random.Random(SPLIT_SEED)
    negative = distinct_problems(rng, {row["prompt"] for row in accuracy_rows()})
    replay = tiny_data.TrainStream(REPLAY_SEED)

    def line() -> str:
        if rng.random() < REPLAY_SHARE:
            return replay.next_problem()
        return "".join(next(negative))

    return {name: [{"text": "\n".join(line() for _ in range(PROBLEMS_PER_ROW))}
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
