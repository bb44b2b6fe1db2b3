"""The benchmark scripts still run against the library: `benchmarks/gpu.py --smoke` end to end,
`benchmarks/accum_memory.py` with a precision, `benchmarks/gpu_session.sh` in its CPU mode and
`benchmarks/compositors.py --small`.

Behaviour only (the table's rows, columns and that every figure is a positive number); speed is
what the benchmarks report, never what a test asserts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

COMPILED_BOTH_ROW = "stage 1 `--encoder both --compile`"
"""Measured only when asked for (`--rows stage1-compile` or the row): the GPU session does."""
DETERMINISTIC_BOTH_ROW = "stage 1 `--encoder both --deterministic`"
DETERMINISTIC_TOWER_ROWS = ("image tower alone, forward+backward, channels-last, no cuDNN benchmark mode",
                            "image tower alone, forward+backward, default layout, no cuDNN benchmark mode")
"""Also only when asked for (`both_deterministic`, `tower-deterministic`): the GPU session does."""
SMOKE_ROWS = (
    "stage 1 `--encoder text`, clip-cir",
    "stage 1 `--encoder text`, published way",
    "stage 1 `--encoder both`, clip-cir: pixel cache, `--channels-last auto`",
    "stage 1 `--encoder both`, pixel cache, `--channels-last off`",
    "stage 1 `--encoder both`, `--pixel-cache off --channels-last off`",
    "stage 2 epoch",
    "image tower alone, forward, batch 4, channels-last",
    "image tower alone, forward, batch 4, default layout",
    "image tower alone, forward+backward, batch 2, channels-last",
    "image tower alone, forward+backward, batch 2, default layout",
    "gallery extraction, pixel cache, batch 4",
    "gallery extraction, decoding",
    "loader, pixel cache",
    "loader, decoding",
)
RATIO_ROWS = {"stage 1 `--encoder text`, clip-cir", "stage 1 `--encoder both`, clip-cir",
              "stage 1 `--encoder both`, pixel cache", "image tower alone, forward, batch 4, channels-last",
              "image tower alone, forward+backward, batch 2, channels-last", "gallery extraction, pixel cache",
              "loader, pixel cache"}
NO_FLOPS_ROWS = {"stage 2 epoch", "loader, pixel cache", "loader, decoding"}


def table_rows(output: str) -> list[list[str]]:
    """The cells of every markdown table row (separator rows left out)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in output.splitlines() if line.startswith("|") and not set(line) <= set("|-")]


def run_gpu_py(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/gpu.py ARGS` in a subprocess that imports this checkout's clip_cir."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def starts(row: list[str], labels) -> bool:
    return any(row[0].startswith(label) for label in labels)


def test_gpu_smoke_prints_the_table(tmp_path):
    result = run_gpu_py(tmp_path, "--smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = table_rows(result.stdout)
    assert header == ["measure", "cir-tiny-vit 64 px bf16", "TFLOP/s", "cir-tiny-rn 64 px bf16", "TFLOP/s"]
    assert [next(label for label in SMOKE_ROWS if row[0].startswith(label)) for row in rows] == list(SMOKE_ROWS)
    for row in rows:
        for value in row[1::2]:  # the measures
            match = re.fullmatch(r"([\d,]+(?:\.\d+)?)(?: \(([\d.]+)x\))?", value)
            assert match, f"{row[0]}: {value!r} is not a figure"
            assert float(match.group(1).replace(",", "")) > 0, row
            if starts(row, RATIO_ROWS):
                assert match.group(2) is not None and float(match.group(2)) > 0, row
        for value in row[2::2]:  # their TFLOP/s, with the share of the matrix-product peak
            if starts(row, NO_FLOPS_ROWS):
                assert value == "—", row
            else:
                match = re.fullmatch(r"([\d.e+-]+) \((\d+)%\)", value)
                assert match and float(match.group(1)) > 0, f"{row[0]}: {value!r}"
    peak = re.search(r"matrix-product peak \(TFLOP/s, 128x128 by 128x128\): bf16 ([\d.e+-]+)", result.stdout)
    assert peak and float(peak.group(1)) > 0
    # The extraction is a plain forward pass of the same pixels (here exactly: same batch, same kernels).
    checks = re.findall(r"check: (.+) px bf16: extraction vs a plain forward of its first batch: max difference "
                        r"(\S+) of the largest feature$", result.stdout, re.MULTILINE)
    assert [model for model, _ in checks] == ["cir-tiny-vit 64", "cir-tiny-rn 64"]
    assert all(float(difference) < 1e-6 for _, difference in checks)
    assert "skipped" not in result.stdout  # --smoke asks for bf16 only, which every device has


def test_gpu_session_script_runs_its_command_lines(tmp_path):
    """`benchmarks/gpu_session.sh` with GPU_SESSION_SMOKE: the GPU measurement's exact options on the
    tiny models, so a typo cannot cost GPU time. Its tables land in $OUT."""
    env = {**os.environ, "GPU_SESSION_SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    gpu_table = (tmp_path / "out" / "gpu_table.md").read_text()
    accum_table = (tmp_path / "out" / "accum_memory.md").read_text()
    assert gpu_table.split("\n\n# ")[0].strip() in result.stdout and accum_table.strip() in result.stdout  # printed
    tables = [table_rows(part) for part in gpu_table.split("\n# ")]
    assert [rows[0] for rows in tables] == [["measure", f"cir-tiny-{m} 64 px bf16", "TFLOP/s"] for m in ("rn", "rn",
                                                                                                      "vit")]
    labels = (*SMOKE_ROWS, COMPILED_BOTH_ROW, DETERMINISTIC_BOTH_ROW, *DETERMINISTIC_TOWER_ROWS)
    stage1, rn, vit = ([next(label for label in labels if row[0].startswith(label)) for row in rows[1:]]
                       for rows in tables)
    assert stage1 == [*(label for label in SMOKE_ROWS if label.startswith("stage 1 `--encoder both`")),
                      DETERMINISTIC_BOTH_ROW, COMPILED_BOTH_ROW]
    towers = [label for label in SMOKE_ROWS if label.startswith("image tower")]
    assert rn == [*towers, *DETERMINISTIC_TOWER_ROWS,
                  *(label for label in SMOKE_ROWS if label.startswith(("gallery", "loader")))]
    assert vit == [label for label in SMOKE_ROWS if label.startswith(("image tower", "gallery"))]
    profile = (tmp_path / "out" / "profile_step.md").read_text()
    kinds_table = next(part for part in profile.split("\n\n") if part.startswith("| kind of operation"))
    kinds = table_rows(kinds_table)[1:]  # each kind of operation's share of the step
    assert kinds and abs(sum(float(row[2].rstrip("%")) for row in kinds) - 100) < 1, kinds
    assert "convolution" in [row[0] for row in kinds]  # a ResNet image tower trains in the step
    assert "mixed precision: bf16" in accum_table
    k_rows = table_rows(accum_table)[1:]
    assert [(row[0], row[1]) for row in k_rows] == [("1", "4"), ("2", "2")]  # K, micro-batch
    assert all(float(row[2]) > 0 for row in k_rows)  # peak GiB


def test_gpu_py_stopped_by_a_time_limit_prints_what_it_measured(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--models",
                                "cir-tiny-rn", "--rows", "tower", "stage1-both"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the first stage-1 run has started: the tower rows are still to come
        if "stage 1 --encoder both" in line:
            process.send_signal(signal.SIGTERM)
            break
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 124
    assert "STOPPED by SIGTERM (a time limit): rows shown as — were not measured" in stdout
    header, *rows = table_rows(stdout)
    assert header == ["measure", "cir-tiny-rn 64 px bf16", "TFLOP/s"] and len(rows) == 7
    assert all(row[1:] == ["—", "—"] for row in rows)


def test_accum_memory_refuses_fp16_on_a_cpu_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accum_memory.py"), "--mixed-precision",
                             "fp16", "--cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "|" not in result.stdout
    assert result.stderr.strip().splitlines() == ["accum_memory.py: error: --mixed-precision fp16 needs a CUDA device: "
                                                  "Accelerate applies no fp16 autocast on a CPU (bf16 works there)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 autocast exists on this machine")
def test_gpu_fp16_alone_on_a_cpu_stops_with_a_message(tmp_path):
    result = run_gpu_py(tmp_path, "--precisions", "fp16")
    assert result.returncode != 0
    assert "bf16 autocast only" in result.stderr
    assert "|" not in result.stdout  # no work, no table


def test_token_bytes_prints_the_bytes_of_each_models_grid_and_captions(tmp_path):
    """ViT-B-16 at 224 px: 14 x 14 cells of 512 float16 values and a 4-byte length, 196 * 512 * 2 + 4
    = 200,708 bytes an image; RN50x4 at 288 px: 9 x 9 of 640, 103,684. A 77-token caption: 78,852 and
    98,564. A training set: images x per image + captions x per caption (FashionIQ: 4 forms a triplet)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "token_bytes.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = table_rows(result.stdout)
    assert header[:4] == ["model", "grid, dim", "per image", "per CIRR caption"] and len(rows) == 2
    expected = (("RN50x4 288 px", "9 x 9, D 640", 103_684, 98_564, 640),
                ("ViT-B-16 224 px", "14 x 14, D 512", 200_708, 78_852, 512))
    for row, (model, grid, image, padded, dim) in zip(rows, expected):
        assert row[:3] == [model, grid, f"{image / 1e3:,.1f} kB"] and row[5] == f"{padded / 1e3:,.1f} kB"
        cirr_tokens = float(re.fullmatch(r".* \(([\d.]+) tokens\)", row[3]).group(1))
        fiq_tokens = float(re.fullmatch(r".* \(([\d.]+) tokens\)", row[4]).group(1))
        assert 12 < cirr_tokens < 20 and 5 < fiq_tokens < cirr_tokens
        cirr = 16_939 * image + 28_225 * (cirr_tokens * dim * 2 + 4)
        fiq = 45_000 * image + 72_000 * (fiq_tokens * dim * 2 + 4)
        # The tokens are printed to one decimal: the totals agree to that rounding.
        assert float(row[6].split()[0]) == pytest.approx(cirr / 1e9, abs=0.06)
        assert float(row[7].split()[0]) == pytest.approx(fiq / 1e9, abs=0.06)


EDIT_KINDS = ("colour", "shape", "size", "add", "remove", "move")
COMPOSITOR_RECALLS = {"CIRR": ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"], "FashionIQ": ["R@10", "R@50"]}
SMALL_VAL_QUERIES = 120
"""`--small`'s val queries per dataset (its --help says so)."""


def _percent(value: str) -> float:
    number = float(value)
    assert 0.0 <= number <= 100.0, value
    return number


def test_compositors_small_prints_a_table_per_dataset(tmp_path):
    """Every compositor at `--small`: the table's structure, recalls that grow with K, per-edit
    recalls that add up to the overall one, and each row's parameter count equal to a freshly
    built compositor's (so each row is the network it names)."""
    import open_clip

    from clip_cir.constants import COMPOSITORS
    from clip_cir.models.compositors.loading import build_compositor

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compositors.py"), "--small", "--compositors",
                             ",".join(COMPOSITORS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sections = result.stdout.split("\n## ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["CIRR layout, val", "FashionIQ layout, val"]
    dim = open_clip.get_model_config("cir-tiny-vit")["embed_dim"]
    parameters = {name: sum(p.numel() for p in build_compositor(name, dim, {}).parameters()) for name in COMPOSITORS}
    for section, (title, recalls) in zip(sections, COMPOSITOR_RECALLS.items()):
        header, *rows = table_rows(section)
        edits = [f"R@10 {kind}" for kind in EDIT_KINDS]
        assert header == ["compositor", *recalls, *edits, "parameters", "s / epoch", "peak MiB"], title
        assert [row[0] for row in rows] == ["zero-shot sum", *COMPOSITORS]
        counts = dict(re.findall(r"(\w+) (\d+)", re.search(r"val queries per edit kind: ([^;\n]+)", section)[1]))
        assert list(counts) == list(EDIT_KINDS) and sum(map(int, counts.values())) == SMALL_VAL_QUERIES
        for row in rows:
            cells = dict(zip(header, row))
            for group in (["R@1", "R@5", "R@10", "R@50"], ["Rs@1", "Rs@2", "Rs@3"]):
                values = [_percent(cells[c]) for c in group if c in recalls]
                assert values == sorted(values), (title, row)  # recall grows with K
            for kind in EDIT_KINDS:
                assert (cells[f"R@10 {kind}"] == "—") == (counts[kind] == "0"), (title, row)
            if title == "CIRR":  # the edit kinds' recalls, weighted by their queries, are the overall R@10
                weighted = sum(int(counts[k]) * _percent(cells[f"R@10 {k}"]) for k in EDIT_KINDS if counts[k] != "0")
                assert abs(weighted / SMALL_VAL_QUERIES - float(cells["R@10"])) <= 0.1, row
        baseline, *trained = (dict(zip(header, row)) for row in rows)
        assert (baseline["parameters"], baseline["s / epoch"], baseline["peak MiB"]) == ("0", "—", "—")
        for cells in trained:
            assert int(cells["parameters"].replace(",", "")) == parameters[cells["compositor"]]
            assert float(cells["s / epoch"]) > 0 and float(cells["peak MiB"]) >= 0


def test_compositor_memory_prints_parameters_and_a_largest_batch_that_it_ran(tmp_path):
    """At toy sizes (D 32, a 2 x 2 grid): each compositor's parameter count equals a freshly built
    one's, the per-sample memory is not negative, and the largest batch is a multiple of 64 that
    was run to check it (or the cap, marked >=)."""
    from clip_cir.models.compositors.loading import build_compositor

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compositor_memory.py"), "--compositors",
                             "tirg,maaf", "--dim", "32", "--grid", "2", "--caption-tokens", "4", "--small", "8",
                             "--large", "64", "--budget-gb", "1.2", "--reserve-gb", "0.2", "--max-batch", "256"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = table_rows(result.stdout)
    assert header == ["compositor", "parameters", "MiB per sample", "fixed MiB", "largest batch (multiple of 64)",
                      "checked"]
    assert [row[0] for row in rows] == ["tirg", "maaf"]
    for row in rows:
        built = build_compositor(row[0], 32, {})
        assert int(row[1].replace(",", "")) == sum(p.numel() for p in built.parameters())
        assert float(row[2]) >= 0 and float(row[3]) >= 0
        largest = int(row[4].removeprefix(">= ").replace(",", ""))
        assert largest % 64 == 0 and 64 <= largest <= 256
        assert re.fullmatch(r"[\d.]+ GB", row[5]), row
