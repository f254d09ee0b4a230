"""The installed package carries its configs; the console script is declared."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import configs

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_and_stages_load():
    assert set(configs.names("profiles")) >= {"a100x2", "h200", "h200-shm", "a10g", "a5000", "h100", "cpu"}
    assert configs.names("train") == ["stage1", "stage2"]
    assert configs.load("train", "stage1")["hyp"]["lr0"] == 0.01
    assert configs.load("profiles", "cpu")["gpus"] == 0


def test_wheel_ships_configs_and_format_doc(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("sainet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("configs/profiles/cpu.yaml", "configs/train/stage1.yaml", "cache_tools/FORMAT.md",
                     "sainet/cli/__init__.py", "loaders/__init__.py", "cache_tools/format.py"):
        assert required in names, required
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sainet = sainet.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_pytest_runs_as_written_from_the_venv():
    """`pytest -m gpu` (the script, whose sys.path lacks the working directory: `python -P` here) collects
    every module (`from tests.x import ...` included) and skips the GPU tests with their reason."""
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_gpu.py", "tests/test_imaging.py", "tests/test_loader_contract.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "error" not in out.lower() and "No module named" not in out
    import torch

    if not torch.cuda.is_available():
        assert "SKIPPED" in out and "needs a CUDA GPU" in out
