"""BassMaskRCNN: config, tiny-backbone train/eval on CPU, weights (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ircr.config import from_dict
from ircr.data.detection import detection_targets
from ircr.data.synthetic import make_tile
from ircr.errors import IrcrError
from ircr.models.maskrcnn import BassMaskRCNN, MaskRCNNConfig, build_maskrcnn, total_loss
from ircr.models.maskrcnn.backbone import load_backbone_weights


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: detection nets run many small ops, which extra threads on a shared
    2-core machine slow down by an order of magnitude."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(
    backbone="tiny", tiny_channels=[8, 16, 16, 32], fpn_channels=16, min_size=[64], max_size=64,
    anchor_sizes=[8, 16, 32, 64, 128], rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64,
    box_representation=32, mask_channels=16, crc_channels=16,
)


def _tiny(**over: object) -> BassMaskRCNN:
    torch.manual_seed(0)
    return build_maskrcnn(from_dict(MaskRCNNConfig, {**TINY, **over}, where="test.yaml"))


def _targets(inst: np.ndarray, min_area: int = 1) -> dict[str, torch.Tensor]:
    """Mask R-CNN targets of an instance map (the library's ``detection_targets``)."""
    t = detection_targets(inst, min_area=min_area)
    return {k: torch.from_numpy(t[k]) for k in ("boxes", "labels", "masks")}


def _sample(seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    img, inst = make_tile(np.random.default_rng(seed), 64)
    return torch.from_numpy(img).permute(2, 0, 1).float(), _targets(inst)


def _empty_target() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(IrcrError, match="test.yaml: unknown config key 'model_depth'"):
        from_dict(MaskRCNNConfig, {"model_depth": 3}, where="test.yaml")
    with pytest.raises(IrcrError, match="model.mask_branches"):
        from_dict(MaskRCNNConfig, {"mask_branches": ["nmh", "fcn"]}, where="test.yaml")
    with pytest.raises(IrcrError, match="model.crc_alpha"):
        from_dict(MaskRCNNConfig, {"crc_alpha": 0}, where="test.yaml")
    cfg = from_dict(MaskRCNNConfig, {}, where="test.yaml")
    assert (cfg.crc_form, cfg.crc_tau_hard, cfg.crc_tau_easy, cfg.crc_band, cfg.crc_alpha,
            cfg.crc_weight, cfg.lrd_boundary_weight) == ("paper", 0.7, 0.3, 4, 0.7, 0.25, 1.0)
    assert cfg.frozen_norm is False and cfg.n_trainable_layers == 5


def test_train_step_gives_the_loss_dict_and_eval_gives_detections() -> None:
    model = _tiny(lrd_boundary_weight=0.5)
    x, t = _sample()
    model.train()
    losses = model([x, x.flip(-1)], [t, _empty_target()])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask", "loss_lrd", "loss_crc"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert float(losses["loss_crc"].detach()) > 0  # synthetic nuclei keep RoIs for CRC
    total_loss(losses).backward()
    grads = [p.grad for p in model.roi_heads.bass_mask_head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        det = model(torch.stack([x, x]))
    assert len(det) == 2
    k = det[0]["boxes"].shape[0]
    assert det[0]["masks"].shape == (k, 1, 64, 64) and det[0]["scores"].shape == (k,)
    assert k <= 100 and bool(((det[0]["masks"] >= 0) & (det[0]["masks"] <= 1)).all())


def test_plain_head_and_hard_only_form_train() -> None:
    x, t = _sample(1)
    plain = _tiny(mask_branches=["nmh"]).train()
    assert "loss_lrd" not in plain([x], [t]) and "loss_crc" not in plain([x], [t])
    hard = _tiny(crc_form="hard_only").train()
    assert torch.isfinite(hard([x], [t])["loss_crc"])


def test_only_background_images_give_zero_mask_losses() -> None:
    model = _tiny().train()
    x, _ = _sample()
    losses = model([x], [_empty_target()])
    for key in ("loss_mask", "loss_lrd", "loss_crc"):
        assert float(losses[key].detach()) == 0.0
    total_loss(losses).backward()


def test_bad_targets_and_images_are_one_line_errors() -> None:
    model = _tiny().train()
    x, t = _sample()
    with pytest.raises(IrcrError, match=r"targets\[0\]\.boxes: box 0 .* has no area"):
        model([x], [{**t, "boxes": torch.zeros_like(t["boxes"])}])
    with pytest.raises(IrcrError, match=r"targets\[0\]\.masks"):
        model([x], [{**t, "masks": t["masks"][:, :32]}])
    with pytest.raises(IrcrError, match=r"targets\[0\]: missing key 'labels'"):
        model([x], [{"boxes": t["boxes"], "masks": t["masks"]}])
    with pytest.raises(IrcrError, match=r"images\[0\]"):
        model.eval()([x[:2]])


def test_weights_only_save_and_load_give_identical_detections(tmp_path: Path) -> None:
    model = _tiny().eval()
    x, _ = _sample()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    other = _tiny(backbone="tiny")
    torch.manual_seed(1)
    other.load_state_dict(torch.load(path, weights_only=True))
    other.eval()
    with torch.no_grad():
        a, b = model([x])[0], other([x])[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_weights_from_a_local_file_and_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub
    from torchvision.models import resnet18

    def no_net(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_net)
    src = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    cfg = from_dict(MaskRCNNConfig, {**TINY, "backbone": "resnet18", "backbone_weights": str(path)})
    assert cfg.frozen_norm and cfg.n_trainable_layers == 3
    model = build_maskrcnn(cfg)
    body = model.backbone.body
    assert torch.equal(body["layer3"][0].conv1.weight, src.layer3[0].conv1.weight)
    assert not body["layer1"][0].conv1.weight.requires_grad
    assert body["layer2"][0].conv1.weight.requires_grad
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(IrcrError, match="bad.pth: cannot read backbone weights"):
        load_backbone_weights(resnet18(weights=None), bad)
    with pytest.raises(IrcrError, match="missing.pth: backbone weights file not found"):
        load_backbone_weights(resnet18(weights=None), tmp_path / "missing.pth")


# the paper's depth (ResNet-50 body; narrow FPN/heads keep it cheap on CPU) and the tiny one
@pytest.mark.parametrize("backbone", ["tiny", "resnet50"])
def test_train_step_on_a_real_monuseg_patch(monuseg_root: Path, backbone: str) -> None:
    from ircr.data.datasets import open_dataset

    sample = next(iter(open_dataset("monuseg", monuseg_root)))
    image, inst = sample.image[400:656, 400:656], sample.inst[400:656, 400:656]
    target = _targets(np.ascontiguousarray(inst), min_area=10)
    assert len(target["labels"]) > 20  # a 256 px MoNuSeg patch holds dozens of nuclei
    model = _tiny(backbone=backbone, min_size=[256], max_size=256,
                  anchor_sizes=[16, 32, 64, 128, 256]).train()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    losses = model([x], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_crc"].detach()) > 0  # real nuclei keep RoIs with all four sets
    total_loss(losses).backward()
