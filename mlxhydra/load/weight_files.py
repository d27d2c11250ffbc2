"""Weight files: discovery, header checks and content fingerprints (no mlx needed)."""

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Dict, List

from ..errors import MissingWeightsError, WeightsError

SAMPLE_BYTES = 1 << 20
SAMPLES = 4


def find_weight_files(model_dir: Path) -> List[Path]:
    """The ``model*.safetensors`` files of a directory, sorted (as mlx-lm globs them)."""
    return sorted(Path(model_dir).glob("model*.safetensors"))


def require_weight_files(model_dir: Path) -> List[Path]:
    """The weight files, of which there must be at least one.

    Raises:
        MissingWeightsError: naming the directory when it has no weight file.
    """
    files = find_weight_files(model_dir)
    if not files:
        raise MissingWeightsError(
            f"{model_dir}: no model*.safetensors weight files (expected model.safetensors "
            "or model-00001-of-0000N.safetensors shards)"
        )
    return files


def absent_shards(model_dir: Path) -> List[str]:
    """The files that ``model.safetensors.index.json`` lists but that do not exist.

    mlx-lm does not read the index (a stale one does not stop a load), so this
    only explains missing weights: an interrupted copy or download.
    An unreadable index gives an empty list.
    """
    index = Path(model_dir) / "model.safetensors.index.json"
    try:
        listed = {str(name) for name in json.loads(index.read_text())["weight_map"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return sorted(name for name in listed if not (Path(model_dir) / name).is_file())


def read_header(file: Path) -> Dict[str, Any]:
    """Read and check a safetensors header against the file's size.

    Raises:
        WeightsError: naming the file, when the header is unreadable or the
            tensors it lists run past the end of the file (a truncated copy).
    """
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{file}: not a safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8 or header_len > 100_000_000:
                raise WeightsError(
                    f"{file}: corrupt safetensors header (declares {header_len} header bytes "
                    f"in a {size}-byte file)"
                )
            header = json.loads(f.read(header_len))
    except PermissionError:
        raise WeightsError(f"{file}: permission denied (expected a readable weight file)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{file}: corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{file}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - header_len
    needed = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{file}: corrupt safetensors header entry {name!r}") from None
        needed = max(needed, end)
    if needed > data_size:
        raise WeightsError(
            f"{file}: truncated: tensors need {needed} data bytes but the file holds "
            f"{data_size}"
        )
    return header


def fingerprint(file: Path, method: str = "fast") -> str:
    """A content fingerprint of one weight file.

    Args:
        file: The file.
        method: ``"full"`` hashes every byte (sha256). ``"fast"`` hashes the
            size, the header (every tensor's name, dtype, shape and offsets)
            and SAMPLES blocks of SAMPLE_BYTES spread over the data, so a
            many-GB file costs a few MB of reading.

    Returns:
        ``"<method>:sha256:<hex>"``.
    """
    h = hashlib.sha256()
    size = file.stat().st_size
    with open(file, "rb") as f:
        if method == "full" or size <= (SAMPLES + 1) * SAMPLE_BYTES:
            method = "full"
            while block := f.read(1 << 24):
                h.update(block)
        elif method == "fast":
            h.update(str(size).encode())
            (header_len,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(header_len))
            start = 8 + header_len
            span = size - start - SAMPLE_BYTES
            for i in range(SAMPLES):
                f.seek(start + span * i // (SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
        else:
            raise ValueError(f"load.fingerprint={method!r}: expected 'fast' or 'full'")
    return f"{method}:sha256:{h.hexdigest()}"


def describe_files(files: List[Path], method: str = "fast") -> List[Dict[str, Any]]:
    """Name, size and fingerprint of each weight file, for the run record."""
    return [
        {"file": str(f), "bytes": f.stat().st_size, "fingerprint": fingerprint(f, method)}
        for f in files
    ]


def combined_fingerprint(described: List[Dict[str, Any]]) -> str:
    """One fingerprint for a whole set of weight files."""
    h = hashlib.sha256()
    for d in described:
        h.update(Path(d["file"]).name.encode() + b"\0" + d["fingerprint"].encode() + b"\0")
    return "sha256:" + h.hexdigest()
