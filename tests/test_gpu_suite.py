"""benchmarks/gpu_suite.py runs on CPU: rows, compile fallback, time boxes, output files."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" /
                                                  "gpu_suite.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    threads = torch.get_num_threads()
    yield load_suite()
    torch.set_num_threads(threads)
    sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]


def test_quick_model_and_memory_rows_with_failing_compile(suite, tmp_path: Path, capsys) -> None:
    # a compile backend that does not exist: reported in the table, eager rows still measured
    rc = suite.main(["--device", "cpu", "--quick", "--sections", "model", "memory",
                     "--compile-backend", "no-such-backend", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "gpu_suite.csv").open()))
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_suite.md", "gpu_suite.csv"}
    by = {(r["what"], r["setting"]): r for r in rows}
    eager = by[("forward", "batch 2, eager, channels_last off, fp32")]
    assert eager["unit"] == "patches/s" and float(eager["value"]) > 0
    assert float(by[("train step", "batch 2, eager, channels_last on, fp32")]["value"]) > 0
    failed = by[("forward", "batch 2, compiled, channels_last on, fp32")]
    assert failed["value"] == "compile failed" and "no-such-backend" in failed["note"]
    train_c = by[("train step", "batch 2, compiled, channels_last on, fp32")]
    assert train_c["value"] == "compile failed"
    off = by[("train step memory per patch", "batch 2, activation checkpointing off")]
    on = by[("train step memory per patch", "batch 2, activation checkpointing on")]
    assert float(on["value"]) < 0.6 * float(off["value"])
    assert "| model | forward | batch 2, eager, channels_last off, fp32 |" in out
    assert (tmp_path / "gpu_suite.md").read_text().count("| memory |") == 2


def test_time_box_skips_with_a_note(suite, tmp_path: Path) -> None:
    assert suite.main(["--device", "cpu", "--quick", "--sections", "model", "--budget", "0",
                       "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "gpu_suite.csv").open()))
    assert len(rows) == 6 and all(r["value"] == "skipped" and r["note"] == "time box"
                                  for r in rows)


def test_cuda_requested_without_cuda_is_a_clear_error(suite, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert suite.main(["--sections", "model"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
