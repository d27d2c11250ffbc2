"""A Hugging Face cache in huggingface_hub's real layout, filled from local model directories.

    <cache>/models--org--name/blobs/<sha256>                 file contents
    <cache>/models--org--name/snapshots/<commit>/<file>      -> ../../blobs/<sha256>
    <cache>/models--org--name/refs/<branch or tag>           the commit hash

This is what ``hf download`` leaves behind; huggingface_hub (and so mlx-lm)
reads it offline without any network access.
"""

import hashlib
import os
from pathlib import Path
from typing import Iterable


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(cache: Path, repo_id: str, model_dir: Path, commit: str,
                 refs: Iterable[str] = ("main",)) -> Path:
    """Store every file of ``model_dir`` as the snapshot ``commit`` of ``repo_id``.

    Args:
        refs: Branches or tags that point at this commit.

    Returns:
        The snapshot directory.
    """
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), commit
    repo = repo_folder(cache, repo_id)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / src.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        ref_file = repo / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def commit_hash(label: str) -> str:
    """A fixed 40-hex commit id for a label."""
    return hashlib.sha1(label.encode()).hexdigest()
