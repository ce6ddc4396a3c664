"""Faults during ``ircr segment``: interrupts, kill -9, signals, existing outputs, bad --mpp.

A slide is a small pyramidal TIFF written losslessly with tifffile; the network is a tiny fixed
1x1 convolution (NP logit rises with darkness, HV = 0), so every run is fast and exactly
reproducible and finds the synthetic nuclei. An uninterrupted run is the reference: runs
interrupted (exceptions at random points, SIGTERM, ``kill -9`` of a real ``ircr segment``
process) and rerun with ``--skip-done`` must end with identical outputs and no leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import Tensor, nn

import ircr.io.atomic as atomic
from ircr.cli.main import main
from ircr.engine.segmenter import NucleusSegmenter
from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams
from test_segment import make_slide

TESTS = Path(__file__).resolve().parent
OUTS = ("labels", "geojson", "csv", "overlay", "summary")


class Dark(nn.Module):
    """A tiny fixed network. NP logit: 12 * (0.55 - mean intensity / 255). HV: minus the
    derivative-of-Gaussian (sigma 4 px) of the darkness, which points away from the centre of
    each dark blob like HoVer-Net's HV maps. Translation invariant, no training needed."""

    def __init__(self, sigma: float = 4.0, radius: int = 9) -> None:
        super().__init__()
        self.np_head = nn.Conv2d(3, 2, 1)
        self.hv_head = nn.Conv2d(1, 2, 2 * radius + 1, padding=radius, bias=False)
        r = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-r**2 / (2 * sigma**2))
        dg = -r / sigma**2 * g
        with torch.no_grad():
            self.np_head.weight.zero_()
            self.np_head.bias.zero_()
            self.np_head.weight[1] = -12.0 / 765.0
            self.np_head.bias[1] = 12.0 * 0.55
            self.hv_head.weight[0, 0] = g[:, None] * dg[None, :] / g.sum()  # minus d/dx
            self.hv_head.weight[1, 0] = dg[:, None] * g[None, :] / g.sum()  # minus d/dy

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.np_head(x)
        dark = torch.relu(logits[:, 1:2]) / 12.0
        return {"np": logits, "hv": torch.tanh(4.0 * self.hv_head(dark))}


def dark_segmenter() -> NucleusSegmenter:
    """The segmenter of these tests (64 px tiles: many tiles, many points to fail at)."""
    return NucleusSegmenter(Dark(), WBISParams(), model_mpp=0.25, device="cpu", batch_size=4,
                            window=64, overlap=16, tile=64, margin=32, name="dark", workers=2)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    make_slide(path, 0.25, 7, shape=(320, 448), region=(16, 24, 288, 400))
    return path


@pytest.fixture(scope="module")
def reference(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref")
    s = dark_segmenter().process(slide, out, tissue=False)
    assert s["n_nuclei"] > 20
    return out


def comparable(out: Path, stem: str = "slide") -> dict[str, Any]:
    """Every output in a form that must be identical between runs (GeoJSON ids are UUIDs,
    summaries hold timings, paths and the pid-free remainder)."""
    geo = json.loads((out / f"{stem}.geojson").read_text())
    for f in geo["features"]:
        f.pop("id")
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    for key in ("timings_s", "seconds", "seconds_per_mm2_tissue", "outputs", "skipped"):
        summary.pop(key, None)
    return {
        "labels": tifffile.imread(out / f"{stem}_labels.tif").tobytes(),
        "labels_file": (out / f"{stem}_labels.tif").read_bytes(),
        "csv": (out / f"{stem}.csv").read_bytes(),
        "overlay": (out / f"{stem}_overlay.png").read_bytes(),
        "geojson": geo, "summary": summary,
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in a:
        assert a[key] == b[key], f"{key} differs from the uninterrupted run"


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


class Stop(BaseException):
    """Stands for an interrupt (like KeyboardInterrupt, but distinguishable)."""


def interrupt_at(monkeypatch: pytest.MonkeyPatch, seg: NucleusSegmenter, where: str,
                 k: int) -> None:
    """Raise Stop at the k-th network call, or just before the k-th rename of an output."""
    calls = {"n": 0}

    def tick() -> None:
        calls["n"] += 1
        if calls["n"] == k:
            raise Stop(f"{where} {k}")

    if where == "predict":
        predict = seg.predict_later  # what the slide pipeline calls per tile

        def stopping_predict(window: np.ndarray) -> Any:
            tick()
            return predict(window)

        monkeypatch.setattr(seg, "predict_later", stopping_predict)
    else:
        commit = atomic.commit

        def stopping_commit(tmp: Path, path: Path) -> None:
            tick()
            commit(tmp, path)

        monkeypatch.setattr(atomic, "commit", stopping_commit)


def test_random_interrupts_then_rerun_equals_uninterrupted(slide: Path, reference: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    ref = comparable(reference)
    rng = np.random.default_rng(2026)
    out = tmp_path / "out"
    points = [("predict", int(rng.integers(1, 36))), ("commit", int(rng.integers(1, 5))),
              ("predict", int(rng.integers(1, 36))), ("commit", 5)]
    for where, k in points:
        seg = dark_segmenter()
        with monkeypatch.context() as m:
            interrupt_at(m, seg, where, k)
            with pytest.raises(Stop):
                seg.process(slide, out, tissue=False, skip_done=True)
        # interrupted: nothing marks it done, nothing half-written has a final name
        assert not (out / "slide_summary.json").exists()
        assert leftovers(out) == []
        for name in ("slide.csv", "slide.geojson", "slide_labels.tif"):
            if (out / name).exists():  # renamed only when complete: equal to the reference
                assert (name == "slide.geojson"
                        or (out / name).read_bytes() == (reference / name).read_bytes())
    s = dark_segmenter().process(slide, out, tissue=False, skip_done=True)
    assert "skipped" not in s
    assert_same(ref, comparable(out))
    again = dark_segmenter().process(slide, out, tissue=False, skip_done=True)
    assert again["skipped"] is True and again["n_nuclei"] == s["n_nuclei"]


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import ircr.engine.segmenter as engine
import ircr.io.atomic as atomic
from test_segment_faults import dark_segmenter


def report(event):
    print(event, flush=True)


seg = dark_segmenter()
predict, commit = seg.predict_later, atomic.commit
seg.predict_later = lambda window: (report("tile"), predict(window))[1]
atomic.commit = lambda tmp, path: (report("commit"), commit(tmp, path))[1]
engine.load_model = lambda *a, **k: seg
from ircr.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args: list[str]) -> subprocess.Popen[str]:
    """``ircr segment`` with the tiny network in its own process; it prints "tile" before each
    network call and "commit" before each output is renamed into place."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]))
    return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS)),
                             "segment", "MODEL", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def kill_at(proc: subprocess.Popen[str], event: str, k: int) -> None:
    """SIGKILL ``proc`` as soon as it reports its k-th ``event`` (it runs on meanwhile)."""
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        seen += line.strip() == event
        if seen == k:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()


def test_kill9_at_random_points_then_rerun_equals_uninterrupted(slide: Path, reference: Path,
                                                                tmp_path: Path) -> None:
    ref = comparable(reference)
    out = tmp_path / "out"
    args = [str(slide), "-o", str(out), "--no-tissue", "--no-progress", "--skip-done"]
    rng = np.random.default_rng(9)
    for event, k in (("tile", int(rng.integers(1, 36))), ("commit", int(rng.integers(1, 5)))):
        proc = run_cli(args)
        kill_at(proc, event, k)
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "slide_summary.json").exists()  # killed before it was done
    assert leftovers(out)  # kill -9 left temporary files behind ...
    dark_segmenter().process(slide, out, tissue=False, skip_done=True)
    assert leftovers(out) == []  # ... which the rerun removed
    assert_same(ref, comparable(out))


def test_sigterm_is_an_interrupt_that_cleans_up(slide: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seg = dark_segmenter()
    predict, calls = seg.predict_later, {"n": 0}

    def predict_then_term(window: np.ndarray) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return predict(window)

    monkeypatch.setattr(seg, "predict_later", predict_then_term)
    monkeypatch.setattr("ircr.engine.segmenter.load_model", lambda *a, **k: seg)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["segment", "MODEL", str(slide), "-o", str(out), "--no-tissue", "--no-progress"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []  # no partial, no temporary file
    assert signal.getsignal(signal.SIGTERM) == before


def tile_png(path: Path, size: int = 96) -> Path:
    from ircr.data.synthetic import make_tile

    img, _ = make_tile(np.random.default_rng(3), size)
    Image.fromarray(img).save(path)
    return path


def test_existing_outputs_need_overwrite_or_skip_done(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    monkeypatch.setattr("ircr.engine.segmenter.load_model", lambda *a, **k: dark_segmenter())
    png = tile_png(tmp_path / "t.png")
    out = tmp_path / "out"
    base = ["segment", "MODEL", str(png), "-o", str(out), "--no-progress", "--mpp", "0.25"]
    assert main(base) == 0
    first = (out / "t.csv").read_bytes()
    capsys.readouterr()
    (out / "t.csv").write_text("edited by the user\n")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "t_labels.tif: output exists (pass --overwrite" in err and err.count("error") == 1
    assert (out / "t.csv").read_text() == "edited by the user\n"  # untouched
    assert main([*base, "--skip-done"]) == 0
    assert "skipped (--skip-done)" in capsys.readouterr().out
    assert (out / "t.csv").read_text() == "edited by the user\n"
    assert main([*base, "--overwrite"]) == 0
    assert (out / "t.csv").read_bytes() == first
    (out / "t_summary.json").unlink()  # an unfinished earlier run: --skip-done redoes it
    (out / "t.csv").write_text("partial\n")
    assert main([*base, "--skip-done"]) == 0
    assert (out / "t.csv").read_bytes() == first and (out / "t_summary.json").is_file()


@pytest.mark.parametrize("mpp", ["1e-9", "1e9", "nan", "0"])
def test_implausible_mpp_is_refused_with_the_range(tmp_path: Path, mpp: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("ircr.engine.segmenter.load_model", lambda *a, **k: dark_segmenter())
    png = tile_png(tmp_path / "t.png", 64)
    rc = main(["segment", "MODEL", str(png), "-o", str(tmp_path / "o"), "--mpp", mpp])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--mpp:" in err[0] and "expected 0.05 to 50 µm per pixel" in err[0]


def test_enlargement_is_checked_before_allocating(slide: Path, tmp_path: Path) -> None:
    """50 µm/px is a plausible pixel size, but for a 0.25 µm/px model a 64 px tile would be
    enlarged 200x (12800 x 12800 px, 164 Mpx): refused up front, no file written; the same
    for a slide (limit: 16x its pixels or 64 Mpx, whichever is larger)."""
    png = tile_png(tmp_path / "t.png", 64)
    out = tmp_path / "o"
    with pytest.raises(IrcrError, match=r"t.png: at 50 µm/px the 64x64 px input would be "
                                        r"enlarged to 12800x12800 px .*164 Mpx, limit 64 Mpx"):
        dark_segmenter().process(png, out, mpp=50.0)
    with pytest.raises(IrcrError, match=r"slide.tif: at 50 µm/px the 448x320 px input would "
                                        r"be enlarged to 89600x64000 px"):
        dark_segmenter().process(slide, out, mpp=50.0)
    assert list(out.iterdir()) == []


def test_output_names_stay_inside_the_output_folder(tmp_path: Path) -> None:
    png = tile_png(tmp_path / "t.png", 64)
    with pytest.raises(IrcrError, match="would leave the output folder"):
        dark_segmenter().process(png, tmp_path / "o", stem="../../escaped", mpp=0.25)
    assert not list(tmp_path.rglob("*escaped*"))


@pytest.mark.parametrize("case", ["out_is_file", "parent_is_file", "read_only"])
def test_unwritable_output_is_one_line(tmp_path: Path, case: str,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("ircr.engine.segmenter.load_model", lambda *a, **k: dark_segmenter())
    png = tile_png(tmp_path / "t.png", 64)
    (tmp_path / "file").write_text("x")
    out = {"out_is_file": tmp_path / "file", "parent_is_file": tmp_path / "file" / "sub",
           "read_only": tmp_path / "ro"}[case]
    if case == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root ignores folder permissions")
        out.mkdir(mode=0o500)
    rc = main(["segment", "MODEL", str(png), "-o", str(out), "--mpp", "0.25", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(out) in err[0], err


def test_corrupt_slide_tile_is_one_line(tmp_path: Path) -> None:
    """A slide whose tiles do not decode: one error line, no flood of asyncio tracebacks."""
    from test_wsi import write_pyramid

    path = tmp_path / "bad.tif"
    img = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    write_pyramid(path, img, 0.25)
    with tifffile.TiffFile(path) as tif:
        page: Any = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts))[5:30]
    data = bytearray(path.read_bytes())
    for off, n in spans:
        data[off:off + n] = bytes(n)
    path.write_bytes(bytes(data))
    code = ("import sys\nfrom ircr.errors import IrcrError\nfrom ircr.io.wsi import open_slide\n"
            f"s = open_slide({str(path)!r})\n"
            "try:\n    s.read_region(0, 0, 0, 800, 600)\n"
            "except IrcrError as e:\n    print('ircr: error:', e, file=sys.stderr)\n")
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent / "src"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    assert "bad.tif: cannot read region x=0 y=0 level=0" in lines[0]
