"""Weight files: discovery, header checks and content fingerprints (no mlx needed)."""

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config.model_source import read_json_object
from ..errors import MissingWeightsError, WeightsError
from ..file_checks import kind, regular_file_problem, stat_path

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


def read_weight_map(model_dir: Path) -> Optional[Dict[str, str]]:
    """``model.safetensors.index.json``'s tensor → file map, or None without a usable one.

    Only a regular file is opened (never a FIFO or a device); an index that is
    unreadable or of the wrong shape counts as none.
    """
    try:
        index = read_json_object(Path(model_dir) / "model.safetensors.index.json",
                                 "a safetensors index", error=ValueError, bounded=False)
    except (OSError, ValueError):
        return None
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        return None
    return {str(k): str(v) for k, v in weight_map.items()}


def absent_shards(model_dir: Path) -> List[str]:
    """The files that ``model.safetensors.index.json`` lists but that do not exist.

    mlx-lm does not read the index (a stale one does not stop a load), so this
    only explains missing weights: an interrupted copy or download.
    An unreadable index gives an empty list.
    """
    weight_map = read_weight_map(model_dir) or {}
    return sorted(name for name in set(weight_map.values()) if regular_file_problem(Path(model_dir) / name))


# Bits per element of each safetensors dtype (the safetensors library's Dtype).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit


def require_regular_file(file: Path, what: str = "weight file") -> os.stat_result:
    """Stat ``file`` (following symlinks) and refuse anything but a regular file.

    Nothing is read: a FIFO or a device could block or never end.

    Returns:
        The file's stat.

    Raises:
        WeightsError: naming the file and what it is (a dangling symlink, a
            symlink loop, a directory, a FIFO, a device, a name too long...).
    """
    info, why = stat_path(file)
    if info is None or not stat.S_ISREG(info.st_mode):
        why = why or f"is {kind(info)}, not a regular file"
        raise WeightsError(f"{file} {why} (expected a {what})")
    return info


def _header_json(file: Path, raw: bytes) -> Dict[str, Any]:
    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise WeightsError(f"{file}: corrupt safetensors header: {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WeightsError(f"{file}: corrupt safetensors header (not UTF-8)") from None
    if not text.startswith("{"):
        raise WeightsError(f"{file}: corrupt safetensors header (does not start with '{{')")
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{file}: corrupt safetensors header: {e}") from None
    except RecursionError:
        raise WeightsError(f"{file}: corrupt safetensors header (nested too deeply)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{file}: corrupt safetensors header (not a JSON object)")
    return header


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


def require_sound_header(file: Path, header: Dict[str, Any], data_size: int) -> None:
    """Validate a parsed header as the safetensors library does.

    Each entry has a known dtype, a shape of non-negative integers and two
    numeric data offsets; sorted by offset, the tensors are contiguous from 0,
    never overlap, each holds exactly dtype size × elements bytes, and the last
    one ends where the file ends.

    Raises:
        WeightsError: naming the file and the tensor.
    """
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise WeightsError(f"{file}: corrupt safetensors header: __metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{file}: tensor {name!r}"
        if not isinstance(info, dict):
            raise WeightsError(f"{where}: corrupt header entry (not an object)")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise WeightsError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            raise WeightsError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)):
            raise WeightsError(f"{where}: data_offsets {offsets!r} are not two non-negative integers")
        entries.append((offsets[0], offsets[1], name, dtype, shape))
    entries.sort()
    end = 0
    for begin, stop, name, dtype, shape in entries:
        where = f"{file}: tensor {name!r}"
        if begin != end or stop < begin:
            what = "overlaps the previous tensor" if begin < end else (
                "leaves a gap before it" if begin > end else "ends before it begins")
            raise WeightsError(f"{where}: invalid data_offsets [{begin}, {stop}] ({what})")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8:
            raise WeightsError(f"{where}: {dtype} {shape} does not fill whole bytes")
        if stop - begin != bits // 8:
            raise WeightsError(
                f"{where}: {dtype} {shape} needs {bits // 8} bytes, data_offsets give {stop - begin}")
        end = stop
    if end > data_size:
        raise WeightsError(
            f"{file}: truncated: tensors need {end} data bytes but the file holds {data_size}")
    if end < data_size:
        raise WeightsError(
            f"{file}: {data_size - end} bytes after the last tensor (the header does not cover them)")


def read_header(file: Path) -> Dict[str, Any]:
    """Read and check a safetensors header against the file (see :func:`require_sound_header`).

    Raises:
        WeightsError: naming the file (and the tensor) when the file is not a
            regular readable file, the header is unreadable, or it does not
            describe the file's bytes exactly.
    """
    size = require_regular_file(file).st_size
    try:
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{file}: not a safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise WeightsError(
                    f"{file}: corrupt safetensors header (declares {header_len} header bytes "
                    f"in a {size}-byte file)"
                )
            raw = f.read(header_len)
    except PermissionError:
        raise WeightsError(f"{file}: permission denied (expected a readable weight file)") from None
    except OSError as e:
        raise WeightsError(f"{file}: cannot be read: {e.strerror or e}") from None
    header = _header_json(file, raw)
    require_sound_header(file, header, size - 8 - header_len)
    return header


def require_sound_headers(files: List[Path]) -> List[Path]:
    """Check that each file is a regular file with a sound header; returns the files."""
    for f in files:
        read_header(f)
    return files


def identities(files: List[Path]) -> Dict[str, Tuple[int, int, int, int]]:
    """``{path: (size, mtime_ns, inode, device)}``: what tells a file replaced or rewritten."""
    out = {}
    for f in files:
        info = os.stat(f)
        out[str(f)] = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
    return out


def require_unchanged(before: Dict[str, Tuple[int, int, int, int]]) -> None:
    """Refuse to go on when a weight file changed since :func:`identities` was taken.

    Raises:
        WeightsError: naming the file: its fingerprint would not be of the bytes that were read.
    """
    for path, then in before.items():
        try:
            now = identities([Path(path)])[path]
        except OSError as e:
            raise WeightsError(
                f"{path}: removed while the run read it ({e.strerror}); run again") from None
        if now != then:
            what = [name for name, a, b in zip(("size", "mtime", "inode", "device"), then, now)
                    if a != b]
            raise WeightsError(
                f"{path} changed while the run read it ({', '.join(what)} differ): its recorded "
                "fingerprint would not be of the bytes loaded; run again once it is stable"
            )


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
    """Name, size and fingerprint of each weight file, for the run record.

    Raises:
        WeightsError: a file that is not a regular file (never read: a FIFO could block).
            Headers are checked where files are read (:func:`require_sound_headers`, the loader).
    """
    for f in files:
        require_regular_file(f)
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
