"""The benchmark scripts still run against the library: `benchmarks/gpu.py --smoke` end to end.

Behaviour only (the table's rows, columns and that every figure is a positive number); speed is
what the benchmarks report, never what a test asserts. About 15 s on a 2-core CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

SMOKE_ROWS = (
    "stage 1 `--encoder text`, clip-cir",
    "stage 1 `--encoder text`, published way",
    "stage 1 `--encoder both`, clip-cir: pixel cache",
    "stage 1 `--encoder both`, `--pixel-cache off`",
    "stage 2 epoch",
    "gallery extraction, pixel cache",
    "gallery extraction, decoding",
    "loader, pixel cache",
    "loader, decoding",
)
RATIO_ROWS = {"stage 1 `--encoder text`, clip-cir", "stage 1 `--encoder both`, clip-cir: pixel cache",
              "gallery extraction, pixel cache", "loader, pixel cache"}


def table_rows(output: str) -> list[list[str]]:
    """The cells of every markdown table row (separator rows left out)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in output.splitlines() if line.startswith("|") and not set(line) <= set("|-")]


def run_gpu_py(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/gpu.py ARGS` in a subprocess that imports this checkout's clip_cir."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_gpu_smoke_prints_the_table(tmp_path):
    result = run_gpu_py(tmp_path, "--smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = table_rows(result.stdout)
    assert header == ["measure", "cir-tiny-vit 64 px bf16", "cir-tiny-rn 64 px bf16"]
    assert [next(label for label in SMOKE_ROWS if row[0].startswith(label)) for row in rows] == list(SMOKE_ROWS)
    for row in rows:
        for value in row[1:]:
            match = re.fullmatch(r"([\d,]+(?:\.\d+)?)(?: \(([\d.]+)x\))?", value)
            assert match, f"{row[0]}: {value!r} is not a figure"
            assert float(match.group(1).replace(",", "")) > 0, row
            if any(row[0].startswith(label) for label in RATIO_ROWS):
                assert match.group(2) is not None and float(match.group(2)) > 0, row
    assert "skipped" not in result.stdout  # --smoke asks for bf16 only, which every device has


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 autocast exists on this machine")
def test_gpu_fp16_alone_on_a_cpu_stops_with_a_message(tmp_path):
    result = run_gpu_py(tmp_path, "--precisions", "fp16")
    assert result.returncode != 0
    assert "bf16 autocast only" in result.stderr
    assert "|" not in result.stdout  # no work, no table
