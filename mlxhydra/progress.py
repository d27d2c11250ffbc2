"""Progress of a long loop, shown where someone watches."""

import sys
from typing import Any, Iterable


def progress(iterable: Iterable[Any], total: int, desc: str):
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)
