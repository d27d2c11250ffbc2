"""A job's fixed cost: each stage timed in run.json, and what the fingerprints read."""

import builtins
import json
import struct

import pytest

from mlxhydra import api
from mlxhydra.load import weight_files
from mlxhydra.load.weight_files import SAMPLE_BYTES, SAMPLES, describe_files, require_sound_headers

STAGES = ["compose", "environment", "validate", "checks", "fingerprint", "instantiate",
          "load_weights", "quantize", "task", "record"]


@pytest.fixture
def bytes_read(monkeypatch):
    """How many bytes weight_files.py reads from files, by file name."""
    counts = {}

    class Counted:
        def __init__(self, f, name):
            self.f, self.name = f, name

        def read(self, *a):
            data = self.f.read(*a)
            counts[self.name] = counts.get(self.name, 0) + len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(weight_files, "open",
                        lambda file, *a, **k: Counted(builtins.open(file, *a, **k), str(file)),
                        raising=False)
    return counts


def test_a_fast_fingerprint_reads_the_header_and_samples_only(tmp_path, bytes_read):
    size = 64 * SAMPLE_BYTES
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    file = tmp_path / "model.safetensors"
    file.write_bytes(struct.pack("<Q", len(header)) + header)
    with open(file, "r+b") as f:
        f.truncate(8 + len(header) + size)  # sparse: nothing to write
    require_sound_headers([file])
    assert bytes_read[str(file)] == 8 + len(header)
    bytes_read.clear()
    describe_files([file], "fast")
    assert bytes_read[str(file)] == 8 + len(header) + SAMPLES * SAMPLE_BYTES  # 4 MiB of 64
    bytes_read.clear()
    describe_files([file], "full")  # only when asked: every byte
    assert bytes_read[str(file)] == file.stat().st_size


def test_each_stage_of_a_job_is_timed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = api.run("task=load")
    times = record["times"]
    assert list(times) == STAGES  # no startup: the process is the caller's
    assert all(type(v) is float and v >= 0 for v in times.values())
    assert times["record"] > 0  # run.json was written before its final write
