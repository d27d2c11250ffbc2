"""Write the embedded model's calibration text: problems from its training distribution.

    python scripts/tiny_calibration.py [OUT] [--problems 1000] [--seed 4321]

The calibrated quantization methods (``quant.method=awq|gptq|dwq|dynamic``) need
text that is not the text they are judged on. ``eval.txt`` and ``accuracy.jsonl``
are the embedded model's held-out problems; this file holds problems drawn the way
training draws them (``scripts/tiny_data.py``'s ``TrainStream``, held-out problems
excluded) from a seed of its own, one a line as in ``eval.txt``. The shipped file
(``mlxhydra/data/tiny_calibration.txt``) is this script's output for its defaults;
configs name it ``${mlxhydra_data:tiny_calibration.txt}``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_data  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mlxhydra" / "data" / "tiny_calibration.txt"
SEED = 4321


def calibration_text(problems: int = 1000, seed: int = SEED) -> str:
    """``problems`` training-distribution problems, one a line."""
    stream = tiny_data.TrainStream(seed)
    return "".join(stream.next_problem() + "\n" for _ in range(problems))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--seed", type=int, default=SEED)
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(calibration_text(a.problems, a.seed))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
