"""``ircr tune-postproc``: WBIS grid search on precomputed maps, grid parsing, writing results.

The maps are built by hand from a synthetic instance map: exact HV targets and a foreground
probability of 0.45 inside nuclei, 0.05 outside. With the default threshold 0.5 nothing is
foreground (AJI 0 by the metric's definition); 0.4 recovers the nuclei, so the search must
pick it. Folder writing is checked on a model folder built here.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from ircr.data.synthetic import make_tile
from ircr.data.targets import hover_targets
from ircr.engine.tune import DEFAULT_GRID, parse_grid, tune_postproc, write_tuned
from ircr.errors import IrcrError
from ircr.postproc.watershed import WBISParams


def hand_maps(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, gt = make_tile(np.random.default_rng(seed), 128)
    hv = hover_targets(gt)[1]
    prob = np.where(gt > 0, 0.45, 0.05).astype(np.float32)
    return prob, hv, gt


def test_grid_search_finds_the_threshold_that_works() -> None:
    maps = [hand_maps(1), hand_maps(2)]
    res = tune_postproc(maps, WBISParams(), {"threshold": (0.4, 0.5)}, "aji", ["a", "b"])
    assert [r["threshold"] for r in res.rows] == [0.5, 0.4]  # the starting value comes first
    assert res.start_score == 0.0  # nothing above 0.5: AJI 0 by definition
    assert res.best["threshold"] == 0.4 and res.best_score > 0.7
    assert res.best["marker_threshold"] == 0.4 and res.best["ksize"] == 21  # untouched
    assert "threshold=0.4" in res.summary()


def test_ties_keep_the_current_values() -> None:
    maps = [hand_maps(3)]
    start = WBISParams(threshold=0.4)
    # every point above 0.45 scores 0 and 0.3/0.4 both capture the same foreground
    res = tune_postproc(maps, start, {"threshold": (0.3, 0.6)}, "aji")
    assert res.rows[0]["threshold"] == 0.4
    assert res.best["threshold"] in (0.3, 0.4)
    if res.rows[1]["aji"] == res.rows[0]["aji"]:
        assert res.best["threshold"] == 0.4


def test_parse_grid() -> None:
    g = parse_grid(["threshold=0.3,0.7", "ksize=11"])
    assert g["threshold"] == (0.3, 0.7) and g["ksize"] == (11,)
    assert g["marker_threshold"] == DEFAULT_GRID["marker_threshold"]
    for bad, msg in (["scale=1"], "KEY one of"), (["threshold"], "KEY=v1"), \
            (["ksize=a,b"], "not a list of numbers"), (["ksize="], "no values"):
        with pytest.raises(IrcrError, match=msg):
            parse_grid(bad)
    with pytest.raises(IrcrError, match="postproc.ksize"):
        tune_postproc([hand_maps(1)], WBISParams(), {"ksize": (41,)})
    with pytest.raises(IrcrError, match="--metric"):
        tune_postproc([hand_maps(1)], WBISParams(), metric="accuracy")


def _folder(tmp_path):
    from ircr.inference.model_folder import save_model_folder
    from ircr.models import ModelConfig, build_model

    cfg = ModelConfig(width=0.125, blocks=[1, 1, 1, 1], decoder_units=[1, 1])
    torch.manual_seed(0)
    return save_model_folder(tmp_path / "m", build_model(cfg, load_pretrained=False), cfg,
                             dataclasses.asdict(WBISParams()), mpp=0.25, patch_size=64)


def test_write_in_place_and_to_a_copy(tmp_path) -> None:
    from ircr.inference.model_folder import load_model_folder

    folder = _folder(tmp_path)
    res = tune_postproc([hand_maps(1)], WBISParams(), {"threshold": (0.4, 0.5)})
    copy = write_tuned(folder, res, out=tmp_path / "tuned")
    assert load_model_folder(copy).postproc.threshold == 0.4
    assert load_model_folder(folder).postproc.threshold == 0.5  # original untouched
    write_tuned(folder, res)
    assert yaml.safe_load((folder / "postproc.yaml").read_text())["threshold"] == 0.4
    doc = json.loads((folder / "tuning.json").read_text())
    assert doc["best"]["threshold"] == 0.4 and len(doc["grid"]) == 2
    with pytest.raises(IrcrError, match="already exists"):
        write_tuned(folder, res, out=copy)


def test_cli_tunes_a_model_folder_on_a_prepared_dataset(tmp_path, capsys) -> None:
    """End to end: the network runs on the validation images, the grid is searched, the
    result is written to a copy; the copy's postproc.yaml holds the reported best values."""
    from ircr.cli.main import main
    from ircr.data.prepare import prepare_dataset

    torch.set_num_threads(1)
    ds = tmp_path / "ds"
    prepare_dataset("synthetic", None, ds, options={"n_images": 3, "size": 96}, patch=64,
                    ratio="1", val_fraction=0.4)
    folder = _folder(tmp_path)
    grid = ["--grid", "threshold=0.3,0.5", "--grid", "marker_threshold=0.4",
            "--grid", "ksize=21", "--grid", "min_size=10", "--grid", "min_prob=0"]
    assert main(["tune-postproc", str(folder), str(ds), *grid, "--device", "cpu",
                 "--out", str(tmp_path / "tuned")]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "tuned" / "tuning.json").read_text())
    assert len(doc["grid"]) == 2 and len(doc["images"]) >= 1 and "best mean aji" in out
    tuned = yaml.safe_load((tmp_path / "tuned" / "postproc.yaml").read_text())
    assert tuned == doc["best"] and tuned["threshold"] in (0.3, 0.5)
    assert yaml.safe_load((folder / "postproc.yaml").read_text())["threshold"] == 0.5
    assert main(["tune-postproc", str(folder), str(ds), "--grid", "nope=1"]) == 2
    assert "--grid: expected KEY=v1,v2" in capsys.readouterr().err


def test_maps_at_the_model_scale_are_scored_at_the_ground_truth_scale() -> None:
    """prob/hv of a 2x-enlarged image (a 0.5 µm/px tile for a 0.25 µm/px model) tuned against
    the 128 px ground truth: the instances are brought back before scoring, so the result
    equals tuning the same maps against the enlarged ground truth to within resampling."""
    from ircr.inference.scale import resize_labels

    _, gt = make_tile(np.random.default_rng(5), 128)
    big = resize_labels(gt, 256, 256)
    hv = hover_targets(big)[1]
    prob = np.where(big > 0, 0.9, 0.05).astype(np.float32)
    small = tune_postproc([(prob, hv, gt)], WBISParams(), {"threshold": (0.5,)}, "dice")
    large = tune_postproc([(prob, hv, big)], WBISParams(), {"threshold": (0.5,)}, "dice")
    assert small.best_score > 0.9
    assert small.best_score == pytest.approx(large.best_score, abs=0.02)
