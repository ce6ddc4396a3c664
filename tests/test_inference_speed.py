"""Inference speed paths: device-side blending, channels_last, torch.compile with fallback.

The tiled prediction now cuts, runs and blends the windows on the device with one copy back;
it must give exactly what the host blending gave (reference below: the former loop, written
out), and the engine's instances must not change with channels_last or a compiled network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ircr.engine.segmenter import NucleusSegmenter
from ircr.errors import IrcrError
from ircr.inference import compiled as compiled_mod
from ircr.inference.predict import _tile_starts, blend_weight, predict_maps
from ircr.io.image import read_image
from ircr.models import ModelConfig, build_model
from ircr.postproc.watershed import WBISParams, wbis

torch.set_num_threads(1)


def host_blend_reference(model: torch.nn.Module, image: np.ndarray, window: int, overlap: int,
                         batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The former host-side loop: numpy windows, one forward + copy back per batch."""
    h, w = image.shape[:2]
    stride, margin = window - overlap, overlap // 2
    ys = _tile_starts(h + 2 * margin, window, stride)
    xs = _tile_starts(w + 2 * margin, window, stride)
    ph, pw = ys[-1] + window, xs[-1] + window
    padded = np.pad(image, ((margin, ph - h - margin), (margin, pw - w - margin), (0, 0)),
                    mode="reflect")
    weight = blend_weight(window, overlap)
    acc = np.zeros((3, ph, pw), np.float32)
    norm = np.zeros((ph, pw), np.float32)
    starts = [(y, x) for y in ys for x in xs]
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i:i + batch_size]
            tiles = np.stack([padded[y:y + window, x:x + window] for y, x in chunk])
            out = model(torch.from_numpy(tiles).permute(0, 3, 1, 2).float())
            prob = torch.softmax(out["np"].float(), dim=1)[:, 1].numpy()
            hv = out["hv"].float().numpy()
            for j, (y, x) in enumerate(chunk):
                acc[0, y:y + window, x:x + window] += prob[j] * weight
                acc[1:, y:y + window, x:x + window] += hv[j] * weight
                norm[y:y + window, x:x + window] += weight
    acc /= norm
    crop = acc[:, margin:margin + h, margin:margin + w]
    return crop[0], crop[1:]


@pytest.fixture(scope="module")
def tile(monuseg_root: Path) -> np.ndarray:
    img = read_image(monuseg_root / "images" / "TCGA-18-5592-01Z-00-DX1.tif")
    return np.ascontiguousarray(img[100:420, 200:584])


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1]))


def test_device_blending_equals_host_blending_bit_for_bit(tile: np.ndarray) -> None:
    model = tiny()
    ref_p, ref_hv = host_blend_reference(model, tile, 128, 32, 3)  # uneven last batch
    prob, hv = predict_maps(model, tile, window=128, overlap=32, batch_size=3)
    assert np.array_equal(prob, ref_p) and np.array_equal(hv, ref_hv)
    cl_p, cl_hv = predict_maps(model, tile, window=128, overlap=32, batch_size=3,
                               channels_last=True)
    assert np.array_equal(wbis(cl_p, cl_hv), wbis(ref_p, ref_hv))
    np.testing.assert_allclose(cl_p, ref_p, atol=1e-5)


def test_compiled_matches_eager_and_pads_the_last_batch(tile: np.ndarray, monkeypatch) -> None:
    monkeypatch.setattr(compiled_mod, "DEFAULT_BACKEND", "aot_eager")  # seconds, not minutes
    model = tiny()
    runner = compiled_mod.compiled(model)
    assert compiled_mod.compiled(model) is runner  # cached per model
    prob, hv = predict_maps(model, tile[:200, :260], window=128, overlap=32, batch_size=4)
    cp, chv = predict_maps(model, tile[:200, :260], window=128, overlap=32, batch_size=4,
                           compile=True)
    assert runner.failed is None
    np.testing.assert_allclose(cp, prob, atol=1e-2)  # bf16 tolerance
    np.testing.assert_allclose(chv, hv, atol=1e-2)


def test_compile_failure_falls_back_with_one_message(tile: np.ndarray, capsys) -> None:
    model = tiny()
    runner = compiled_mod.CompiledOrEager(model, backend="no-such-backend")
    x = torch.from_numpy(tile[:64, :64]).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        eager = model.eval()(x)
        out1, out2 = runner(x), runner(x)
    msg = capsys.readouterr().err
    assert msg.count("torch.compile (backend no-such-backend) failed") == 1
    assert "running the network eagerly" in msg and msg.count("\n") == 1
    assert torch.equal(out1["np"], eager["np"]) and torch.equal(out2["hv"], eager["hv"])
    with pytest.raises(IrcrError, match="model input"):
        runner(x[:, :, :60])  # the input's own error is not a compile failure


def test_engine_instances_unchanged_with_compile_and_channels_last(tile: np.ndarray,
                                                                  monkeypatch) -> None:
    monkeypatch.setattr(compiled_mod, "DEFAULT_BACKEND", "aot_eager")
    model = tiny()
    plain = NucleusSegmenter(model, WBISParams(), model_mpp=0.25, device="cpu", batch_size=4,
                             window=128, overlap=32, tile=256, margin=32)
    fast = NucleusSegmenter(model, WBISParams(), model_mpp=0.25, device="cpu", batch_size=4,
                            window=128, overlap=32, tile=256, margin=32, compile=True)
    fast.channels_last = True
    a = plain.segment(tile, mpp=0.25)
    b = fast.segment(tile, mpp=0.25)
    assert np.array_equal(a.inst, b.inst)
    assert "compiled" in fast.describe()


def test_cpu_inductor_is_frozen_with_one_static_graph_per_shape() -> None:
    model = tiny()
    assert compiled_mod.compile_options(model, "inductor") == {
        "options": {"freezing": True}, "dynamic": False}
    assert compiled_mod.compile_options(model, "aot_eager") == {}


@pytest.mark.slow
def test_inductor_compiled_within_bf16_tolerance(tile: np.ndarray) -> None:
    """Frozen inductor graphs (CPU) for two window shapes give the eager maps (fp32)."""
    model = tiny()
    for size in (128, 96):  # the second shape builds a second static graph
        prob, hv = predict_maps(model, tile[:size, :size], window=128, overlap=0, batch_size=1)
        cp, chv = predict_maps(model, tile[:size, :size], window=128, overlap=0, batch_size=1,
                               compile=True)
        assert compiled_mod.compiled(model).failed is None
        np.testing.assert_allclose(cp, prob, atol=1e-4)
        np.testing.assert_allclose(chv, hv, atol=1e-4)
