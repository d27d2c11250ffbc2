"""run.json and the other records are written atomically: a failed write leaves the old file whole."""

import errno
import json
import os

import pytest

from mlxhydra.record import atomic
from mlxhydra.record.schema import RecordWriter, read_record


class HalfWriter:
    """A file whose write stores the first half of the data, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def inject(fault: str, monkeypatch) -> None:
    """Make the next atomic write fail after part (or all) of its data was written."""
    if fault == "fsync":
        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(atomic.os, "fsync", fsync)
    else:
        fdopen = os.fdopen
        monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: HalfWriter(fdopen(fd, *a, **k)))


@pytest.mark.parametrize("fault", ["half_written", "fsync"])
def test_a_failed_update_leaves_the_previous_run_json_whole(tmp_path, monkeypatch, fault):
    path = tmp_path / "run.json"
    writer = RecordWriter(path, run_dir=str(tmp_path), seed=3, times={"compose": 0.5})
    before = path.read_bytes()
    record = read_record(path)
    assert record["status"] == "running" and record["seed"] == 3
    kept = dict(writer.data)

    inject(fault, monkeypatch)
    with pytest.raises(OSError) as e:
        writer.update(metrics={"perplexity": 1.5, "text": "x" * 10_000}, times={"compose": 0.5, "task": 2.0})
    assert e.value.errno in (errno.ENOSPC, errno.EIO)
    monkeypatch.undo()

    assert path.read_bytes() == before  # the previous record, whole
    assert json.loads(before) == record
    assert os.listdir(tmp_path) == ["run.json"]  # no temporary file left
    assert writer.data == kept  # the writer did not take the failed fields
    writer.finish("completed", metrics={"perplexity": 1.5})
    assert read_record(path)["status"] == "completed"
    assert os.listdir(tmp_path) == ["run.json"]


@pytest.mark.parametrize("fault", ["half_written", "fsync"])
def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch, fault):
    inject(fault, monkeypatch)
    with pytest.raises(OSError):
        atomic.write_json_atomic(tmp_path / "metrics.json", {"x": list(range(1000))})
    assert os.listdir(tmp_path) == []


def test_written_file_is_the_data_with_the_umask_permissions(tmp_path):
    path = tmp_path / "run.json"
    atomic.write_json_atomic(path, {"b": 1, "a": [float("nan"), "ü"]})
    assert path.read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": [\n    NaN,\n    "ü"\n  ]\n}\n'
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["run.json"]
