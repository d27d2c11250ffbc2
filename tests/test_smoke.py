import json

from conftest import EMBEDDED_TINY, read_run, run_cli, run_dirs


def test_default_run_records_the_embedded_model(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path)
    record = read_run(run_dir)
    assert record["status"] == "completed"
    expected = json.loads((EMBEDDED_TINY / "config.json").read_text())
    assert json.loads((run_dir / "model_config.json").read_text()) == expected
