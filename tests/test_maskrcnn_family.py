"""Mask R-CNN model family: tiled detection keeps every nucleus once (issue 12, phase 2)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from ircr.inference.detect import detection_windows, paint_tiled, predict_detections
from ircr.postproc.detections import PaintParams


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: detection nets run many small ops, which extra threads on a shared
    2-core machine slow down by an order of magnitude."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EIGHT = np.ones((3, 3), bool)


class BlobDetector(nn.Module):
    """Eval-mode stand-in for BassMaskRCNN: one detection per 8-connected dark blob.

    Its output for a blob depends only on the blob's pixels, so a window that holds a blob
    whole detects exactly that blob (what a well-trained detector approximates).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in images:
            self.calls += 1
            dark = (img.mean(0) < 128).cpu().numpy()
            lab, n = ndimage.label(dark, structure=EIGHT)
            boxes, masks = [], []
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                masks.append(lab == k)
            h, w = dark.shape
            out.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.linspace(0.95, 0.6, max(n, 1))[:n],
                "labels": torch.ones(n, dtype=torch.int64),
                "masks": torch.from_numpy(np.array(masks, np.float32).reshape(n, 1, h, w)),
            })
        return out


def _disks(h: int, w: int, seed: int, centres: list[tuple[int, int]]) -> np.ndarray:
    """White image with dark disks (radius 3-6), 2 px apart and 2 px from the border."""
    rng = np.random.default_rng(seed)
    taken = np.zeros((h, w), bool)
    img = np.full((h, w, 3), 230, np.uint8)
    tries = [(c, int(rng.integers(3, 7))) for c in centres]
    tries += [((int(rng.integers(0, h)), int(rng.integers(0, w))), int(rng.integers(3, 7)))
              for _ in range(h * w // 300)]
    for (cy, cx), r in tries:
        if cy - r < 2 or cx - r < 2 or cy + r > h - 3 or cx + r > w - 3:
            continue
        yy, xx = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if taken[cy - r - 2:cy + r + 3, cx - r - 2:cx + r + 3].any():  # 2 px apart
            continue
        taken[cy - r:cy + r + 1, cx - r:cx + r + 1] |= disk
    img[taken] = 40
    return img


def _pixel_sets(inst: np.ndarray) -> set[frozenset[int]]:
    flat = inst.ravel()
    return {frozenset(np.flatnonzero(flat == i).tolist()) for i in np.unique(flat) if i}


def test_windows_cores_partition_the_image() -> None:
    wins = detection_windows(150, 230, 64, 32)
    cover = np.zeros((150, 230), int)
    for win in wins:
        y0, x0, y1, x1 = win.core
        assert win.y <= y0 and y1 <= win.y + 64 and win.x <= x0 and x1 <= win.x + 64
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert [w.core for w in detection_windows(40, 50, 64, 16)] == [(0, 0, 40, 50)]


def test_tiled_detection_finds_every_nucleus_once() -> None:
    h, w, window, overlap = 150, 230, 64, 32
    seams = sorted({win.core[1] for win in detection_windows(h, w, window, overlap)} - {0})
    rows = sorted({win.core[0] for win in detection_windows(h, w, window, overlap)} - {0})
    centres = [(r, c) for r in rows for c in seams]  # nuclei centred on the core corners
    img = _disks(h, w, 0, centres)
    truth, n_truth = ndimage.label(img[..., 0] < 128, structure=EIGHT)
    assert n_truth > 40
    model = BlobDetector()
    dets, prob = predict_detections(model, img, window=window, overlap=overlap, batch_size=3)
    assert model.calls == len(detection_windows(h, w, window, overlap)) > 12
    assert int(dets.responsible.sum()) == n_truth  # each nucleus owned by one window
    tiled = paint_tiled(dets, PaintParams(score_threshold=0.5))
    assert _pixel_sets(tiled) == _pixel_sets(truth)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    inside = prob[truth > 0]  # score x mask prob of the nucleus' own detection (0.6 .. 0.95)
    assert inside.min() >= 0.6 - 1e-6 and inside.max() <= 0.95 + 1e-6
    assert float(prob[truth == 0].max()) == 0.0
    # untiled: one window over the whole (reflect-padded) image gives the same nuclei
    whole, _ = predict_detections(BlobDetector(), img, window=232, overlap=0)
    assert len(whole.windows) == 1
    assert _pixel_sets(paint_tiled(whole, PaintParams(score_threshold=0.5))) == _pixel_sets(truth)


def test_small_images_and_bad_input() -> None:
    img = _disks(30, 41, 1, [])
    dets, prob = predict_detections(BlobDetector(), img, window=64, overlap=16)
    truth, _ = ndimage.label(img[..., 0] < 128, structure=EIGHT)
    assert _pixel_sets(paint_tiled(dets)) == _pixel_sets(truth) and prob.shape == (30, 41)
    from ircr.errors import IrcrError

    with pytest.raises(IrcrError, match="image: expected uint8"):
        predict_detections(BlobDetector(), img.astype(np.float32))


TINY = dict(
    backbone="tiny", tiny_channels=[8, 16, 16, 32], fpn_channels=16, min_size=[64], max_size=64,
    anchor_sizes=[8, 16, 32, 64, 128], rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
    box_representation=32, mask_channels=16, crc_channels=16, box_detections_per_img=30,
)


def test_maskrcnn_model_folder_segments_and_evaluates(tmp_path: Path) -> None:
    from ircr import load_model
    from ircr.cli.main import main
    from ircr.config import from_dict
    from ircr.data.prepare import prepare_samples
    from ircr.data.synthetic import iter_synthetic, make_tile
    from ircr.inference.family import get_family
    from ircr.inference.model_folder import load_model_folder, save_model_folder
    from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn

    cfg = from_dict(MaskRCNNConfig, TINY)
    torch.manual_seed(0)
    model = build_maskrcnn(cfg)
    folder = save_model_folder(
        tmp_path / "model", model, cfg, dataclasses.asdict(PaintParams(score_threshold=0.2)),
        mpp=0.25, patch_size=64, inference={"window": 64, "overlap": 16, "batch_size": 4},
        family="maskrcnn")
    loaded = load_model_folder(folder)
    assert loaded.family is get_family("maskrcnn") and loaded.model_cfg == cfg
    seg = load_model(folder, device="cpu")
    image, _ = make_tile(np.random.default_rng(3), (100, 140))
    res = seg.segment(image, mpp=0.25)
    assert res.inst.shape == (100, 140) and res.inst.dtype == np.int32
    assert len(res) == len(np.unique(res.inst)) - 1 > 0  # an untrained net still detects
    # the same network on the same tiles, painted directly, gives the same map
    dets, _ = predict_detections(loaded.model, image, window=64, overlap=16)
    assert np.array_equal(paint_tiled(dets, PaintParams(score_threshold=0.2)) > 0, res.inst > 0)
    prepare_samples(iter_synthetic(n_images=3, size=96), tmp_path / "ds", source="synthetic",
                    patch=64)
    out = tmp_path / "eval"
    assert main(["evaluate", str(folder), str(tmp_path / "ds"), "--split", "all",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean"]["aji"] <= 1.0
    from ircr.io.writers import write_png

    write_png(tmp_path / "tile.png", image)
    seg_out = tmp_path / "seg"
    assert main(["segment", "--model", str(folder), str(tmp_path / "tile.png"), "-o",
                 str(seg_out), "--device", "cpu", "--mpp", "0.25", "--no-progress"]) == 0
    assert any(seg_out.rglob("*.geojson"))


def test_family_build_keeps_frozen_norm_of_backbone_weights(tmp_path: Path) -> None:
    from ircr.config import from_dict
    from ircr.inference.family import get_family
    from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn

    path = tmp_path / "tiny_backbone.pt"
    torch.save(build_maskrcnn(from_dict(MaskRCNNConfig, TINY)).backbone.body.state_dict(), path)
    cfg = from_dict(MaskRCNNConfig, {**TINY, "backbone_weights": str(path)})
    trained = build_maskrcnn(cfg)
    path.unlink()  # the model folder must not need the backbone file any more
    rebuilt = get_family("maskrcnn").build(cfg)
    rebuilt.load_state_dict(trained.state_dict())  # strict: same keys, same shapes
    assert type(rebuilt.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_segmenter_tiles_and_slides_keep_every_nucleus_once(tmp_path: Path) -> None:
    # two levels of tiling: the engine's stitching tiles (128 + margin 32) and, inside each
    # read window, the family's detection windows (64, overlap 32)
    import tifffile

    from ircr.engine.segmenter import NucleusSegmenter
    from ircr.inference.family import get_family
    from test_wsi import write_pyramid

    seg = NucleusSegmenter(BlobDetector(), {"score_threshold": 0.5}, model_mpp=0.25,
                           device="cpu", window=64, overlap=32, tile=128, margin=32,
                           family=get_family("maskrcnn"), workers=2)
    image = _disks(300, 420, 5, [(128, 128), (128, 256), (256, 128), (64, 64)])
    truth, n = ndimage.label(image[..., 0] < 128, structure=EIGHT)
    res = seg.segment(image, mpp=0.25)
    assert _pixel_sets(res.inst) == _pixel_sets(truth) and len(res) == n
    path = tmp_path / "slide.tif"
    big = _disks(520, 400, 6, [(256, 256), (384, 128)])
    big_truth, big_n = ndimage.label(big[..., 0] < 128, structure=EIGHT)
    write_pyramid(path, big, 0.25, levels=1)
    summary = seg.process(path, tmp_path / "out", tissue=False)
    labels = tifffile.imread(tmp_path / "out" / "slide_labels.tif")
    assert summary["kind"] == "slide" and summary["n_nuclei"] == big_n
    assert _pixel_sets(labels) == _pixel_sets(big_truth)
