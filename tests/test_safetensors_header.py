"""The safetensors header check against the reference: the ``safetensors`` library's own verdict.

Each damaged file below is refused by mlxhydra exactly when the library refuses
it, with one line naming the file and (where one is at fault) the tensor; an
intact file passes both. Nothing here runs the command: the header check is
what every load and fingerprint goes through first.
"""

import json
import struct
from pathlib import Path

import pytest

from mlxhydra.errors import WeightsError
from mlxhydra.load.weight_files import read_header

safetensors = pytest.importorskip("safetensors")


def write(path: Path, header: dict, data: bytes, header_bytes: bytes = None) -> Path:
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def two_tensors(a=(0, 16), b=(16, 24), dtype_b="F32", shape_b=(2,)):
    return {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": list(a)},
            "b": {"dtype": dtype_b, "shape": list(shape_b), "data_offsets": list(b)}}


# id -> (header, data, header bytes or None, texts mlxhydra's message holds)
CASES = {
    "intact": (two_tensors(), bytes(24), None, None),
    "intact_with_metadata": ({**two_tensors(), "__metadata__": {"format": "mlx"}}, bytes(24), None, None),
    "overlapping": (two_tensors(b=(8, 16)), bytes(16), None,
                    ["'b'", "overlaps the previous tensor"]),
    "gap": (two_tensors(b=(20, 28)), bytes(28), None, ["'b'", "leaves a gap"]),
    "not_from_zero": (two_tensors(a=(4, 20), b=(20, 28)), bytes(28), None, ["'a'", "leaves a gap"]),
    "offsets_not_numbers": (two_tensors(b=("16", "24")), bytes(24), None,
                            ["'b'", "data_offsets ['16', '24'] are not two non-negative integers"]),
    "negative_offset": (two_tensors(b=(-8, 24)), bytes(24), None, ["'b'", "data_offsets"]),
    "one_offset": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), None,
                   ["'a'", "data_offsets"]),
    "size_mismatch": (two_tensors(shape_b=(3,)), bytes(24), None,
                      ["'b'", "F32 [3] needs 12 bytes, data_offsets give 8"]),
    "past_the_end": (two_tensors(), bytes(20), None, ["truncated: tensors need 24 data bytes"]),
    "bytes_after_last_tensor": (two_tensors(), bytes(32), None, ["8 bytes after the last tensor"]),
    "unknown_dtype": (two_tensors(dtype_b="F31"), bytes(24), None, ["'b'", "unknown dtype 'F31'"]),
    "negative_dimension": (two_tensors(shape_b=(-2,)), bytes(24), None, ["'b'", "shape [-2]"]),
    "metadata_not_strings": ({**two_tensors(), "__metadata__": {"n": 1}}, bytes(24), None,
                             ["__metadata__ must map strings to strings"]),
    "entry_not_object": ({"a": [0, 16]}, bytes(16), None, ["'a'", "not an object"]),
    "header_not_object": (None, b"", b"[1, 2]", ["does not start with '{'"]),
    "header_not_utf8": (None, b"", b"{\xff\xfe}", ["not UTF-8"]),
    "header_not_json": (None, b"", b"{not json}", ["corrupt safetensors header"]),
}


def library_accepts(path: Path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            list(f.keys())
    except Exception:  # SafetensorError, and the errors of its deserializer
        return False
    return True


@pytest.mark.parametrize("case", sorted(CASES))
def test_header_check_agrees_with_the_safetensors_library(case, tmp_path):
    header, data, header_bytes, says = CASES[case]
    path = write(tmp_path / "model.safetensors", header, data, header_bytes)
    accepted = library_accepts(path)
    assert accepted == (says is None), f"the library {'accepts' if accepted else 'refuses'} {case}"
    if says is None:
        assert set(read_header(path)) == set(header)
        return
    with pytest.raises(WeightsError) as e:
        read_header(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for text in says:
        assert text in message, (text, message)


def test_a_real_mlx_file_passes_and_every_single_byte_truncation_is_refused(tmp_path, llama_dir):
    """mlx's own file passes; cut anywhere, both the library and mlxhydra refuse it."""
    data = (llama_dir / "model.safetensors").read_bytes()
    read_header(llama_dir / "model.safetensors")
    (header_len,) = struct.unpack("<Q", data[:8])
    for cut in (len(data) - 1, 8 + header_len + 1, 8 + header_len, header_len, 7):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        assert not library_accepts(path)
        with pytest.raises(WeightsError):
            read_header(path)
