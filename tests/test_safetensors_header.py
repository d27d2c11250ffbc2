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
    # zero-length tensors: no bytes, at the end, at the start, two at one offset, alone
    "zero_length_last": (two_tensors(b=(16, 16), shape_b=(0,)), bytes(16), None, None),
    "zero_length_first": (two_tensors(a=(16, 24), b=(0, 0), shape_b=(0, 4))
                          | {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                          None, None),
    "two_zero_length_last": ({**two_tensors(),
                              "c": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [24, 24]},
                              "d": {"dtype": "I8", "shape": [0], "data_offsets": [24, 24]}},
                             bytes(24), None, None),
    "zero_length_alone": ({"z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}, b"", None, None),
    "zero_length_past_the_end": (two_tensors(b=(20, 20), shape_b=(0,)), bytes(16), None,
                                 ["'b'", "invalid data_offsets [20, 20] (leaves a gap before it)"]),
    "zero_elements_with_bytes": (two_tensors(b=(16, 20), shape_b=(0,)), bytes(20), None,
                                 ["'b'", "F32 [0] needs 0 bytes, data_offsets give 4"]),
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


def library_dtypes() -> list:
    """The safetensors library's own dtype table, as its refusal of an unknown dtype lists it."""
    raw = json.dumps({"t": {"dtype": "NO_SUCH", "shape": [1], "data_offsets": [0, 1]}}).encode()
    with pytest.raises(Exception) as refused:
        safetensors.deserialize(struct.pack("<Q", len(raw)) + raw + b"\0")
    listed = str(refused.value).split("expected one of ", 1)[1].split(" at line")[0]
    return [name.strip(" `") for name in listed.split(",")]


def test_the_dtype_table_is_the_librarys():
    from mlxhydra.load.weight_files import DTYPE_BITS

    names = library_dtypes()
    assert {"F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "F8_E4M3"} <= set(names)  # parsed right
    assert sorted(DTYPE_BITS) == sorted(names)


# Bits per element, from the dtypes' definitions (not from mlxhydra's table).
EXPECTED_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
                 "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
                 "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


@pytest.mark.parametrize("dtype", library_dtypes() if safetensors else [])
@pytest.mark.parametrize("elements", [4, 3, 1])
def test_every_dtype_takes_the_bytes_the_library_says(dtype, elements, tmp_path):
    """For each dtype: the exact size passes both, one byte more or less fails both (a wrong
    width in the table, or a rounding of sub-byte sizes, disagrees with the library)."""
    bits = EXPECTED_BITS.get(dtype, 8)  # the F8 variants
    exact = bits * elements / 8
    verdicts = {}
    for size in sorted({int(exact) - 1, int(exact), int(exact) + 1, -(-bits * elements // 8)} - {-1}):
        path = write(tmp_path / f"{size}.safetensors",
                     {"t": {"dtype": dtype, "shape": [elements], "data_offsets": [0, size]}}, bytes(size))
        try:
            read_header(path)
            ours = True
        except WeightsError:
            ours = False
        verdicts[size] = (library_accepts(path), ours)
    assert all(lib == ours for lib, ours in verdicts.values()), verdicts
    assert {size for size, (lib, _) in verdicts.items() if lib} == ({exact} if exact == int(exact) else set())
