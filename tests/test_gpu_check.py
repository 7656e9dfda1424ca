"""bench/gpu_check.sh fails at once, with a clear message and exit code 2, without a CUDA GPU."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_stops_clearly_without_a_gpu(tmp_path):
    pairforge = Path(sys.executable).with_name("pairforge")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
           "PAIRFORGE": str(pairforge)}  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA GPU visible" in result.stderr and "one CUDA GPU" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing started
    missing = {**env, "PAIRFORGE": str(tmp_path / "no-such-pairforge")}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=missing,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "not found" in result.stderr
