import subprocess
import sys
from pathlib import Path

SCALER = str(Path(sys.executable).parent / "taskqueue-scaler")


def test_scaler_prints_its_usage():
    result = subprocess.run([SCALER, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: taskqueue-scaler run --config")


def test_scaler_says_it_is_not_built_yet():
    result = subprocess.run([SCALER, "run"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "taskqueue-scaler: error: not implemented yet"
