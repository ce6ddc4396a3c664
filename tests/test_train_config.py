"""Experiment config schema: every preset validates; bad configs give one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ircr.config import to_dict
from ircr.errors import IrcrError
from ircr.train.config import ExperimentConfig, load_experiment
from ircr.train.methods import get_method
from ircr.train.trainer import lr_at_epoch

REPO = Path(__file__).resolve().parents[1]
# experiment configs; configs/protocols/ holds `ircr experiment` protocols (test_experiment.py),
# configs/pretrain/ `ircr pretrain` configs (test_pretrain.py validates those)
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                 if p.relative_to(REPO / "configs").parts[0] not in ("protocols", "pretrain"))


def test_configs_folder_has_the_presets() -> None:
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    for ds in ("monuseg", "consep", "monusac", "pannuke"):
        for r in ("1-32", "1-16", "1-8", "1-4", "1"):
            assert f"{ds}/supervised_r{r}.yaml" in names
    assert "tiny_synthetic.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_validates(path: Path) -> None:
    cfg = load_experiment(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.dataset is not None
    get_method(cfg.method.name)  # the named method exists


def test_paper_schedules() -> None:
    """MoNuSeg/CoNSeP: 150 epochs, x0.1 after 100; MoNuSAC/PanNuke: 50 epochs, x0.1 every 25."""
    for ds, epochs, steps in (("monuseg", 150, [100]), ("consep", 150, [100]),
                              ("monusac", 50, [25]), ("pannuke", 50, [25])):
        cfg = load_experiment(REPO / "configs" / ds / "supervised_r1-8.yaml")
        assert (cfg.train.epochs, cfg.train.lr_steps, cfg.train.lr) == (epochs, steps, 1e-4)
        assert (cfg.data.batch_size, cfg.data.patch_size) == (4, 256)
        assert cfg.data.split == "ratio_1-8_seed0"
        assert cfg.method.name == "supervised"
    assert lr_at_epoch(1e-4, [100], 0.1, 99) == 1e-4
    assert lr_at_epoch(1e-4, [100], 0.1, 100) == pytest.approx(1e-5)
    assert lr_at_epoch(1e-4, [25], 0.1, 49) == pytest.approx(1e-5)


def test_method_defaults_are_the_spec_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {dataset: x}\nmethod: {name: ircr}\n")
    cfg = load_experiment(p).method
    m = cfg.options
    assert (cfg.name, m.ema_alpha, m.gamma1, m.gamma2) == ("ircr", 0.95, 0.1, 100.0)
    assert (m.miac_boundary_beta, m.match_radius, m.prior_tau, m.piac_weight) == (0.5, 1.5, 0.35,
                                                                                   2.0)
    assert (m.prior, m.prior_combine, m.mask_source, m.piac, m.miac) == (None, "mean", "current",
                                                                         True, True)
    assert (cfg.weak_noise_std, m.wbis_workers) == (0.02, 0)
    p.write_text("data: {dataset: x}\nmethod: {name: self_training}\n")
    assert load_experiment(p).method.options.rounds == 1


def test_base_include_merges_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("data: {dataset: d, batch_size: 2}\ntrain: {epochs: 5}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\ndata: {split: s1}\n")
    cfg = load_experiment(tmp_path / "c.yaml", ["train.epochs=7", "method.name=ircr"])
    assert (cfg.data.dataset, cfg.data.batch_size, cfg.data.split) == (Path("d"), 2, "s1")
    assert (cfg.train.epochs, cfg.method.name) == (7, "ircr")
    again = load_experiment(tmp_path / "c.yaml")
    assert to_dict(again)["train"]["epochs"] == 5


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "overrides", "pattern"),
    [
        ("data: {dataset: d}\ntrain: {epochz: 3}\n", [], r"unknown config key 'train.epochz'"),
        ("data: {dataset: d}\nbogus: 1\n", [], r"unknown config key 'bogus'"),
        ("data: {dataset: d}\ntrain: {epochs: ten}\n", [], r"'train.epochs' must be int"),
        ("data: {dataset: d}\ntrain: {lr: [1]}\n", [], r"'train.lr' must be float"),
        ("data: {dataset: d}\nmethod: {name: ircr, piac: maybe}\n", [],
         r"'method.piac' must be bool"),
        ("data: {dataset: d}\nmethod: {name: fancy}\n", [], r"'method.name' must be"),
        ("train: {epochs: 3}\n", [], r"missing required config key 'data.dataset'"),
        ("data: {dataset: d}\neval: {window: 64, overlap: 64}\n", [], r"'eval.overlap'"),
        ("data: {dataset: d}\ntrain: {epochs: 0}\n", [], r"'train.epochs' must be >= 1"),
        ("data: {dataset: d}\nmodel: {width: 9}\n", [], r"model.width"),
        ("data: {dataset: d}\npostproc: {ksize: 40}\n", [], r"postproc.ksize"),
        ("data: {dataset: d}\n", ["train.nope=1"], r"unknown config key 'train.nope'"),
        ("data: {dataset: d}\n", ["train.epochs"], r"must look like key=value"),
        ("base: missing.yaml\n", [], r"included file not found"),
        ("base: exp.yaml\ndata: {dataset: d}\n", [], r"cycle"),
        ("base: [1]\n", [], r"'base' must be a file name"),
        ("data: [\n", [], r"invalid YAML"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path: Path, text: str, overrides: list[str],
                                          pattern: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(IrcrError, match=pattern) as err:
        load_experiment(p, overrides)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(p) in msg or "--set" in msg


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(IrcrError, match="config file not found"):
        load_experiment(tmp_path / "nope.yaml")


@pytest.mark.parametrize("ratio", ["1-32", "1-16", "1-8", "1-4"])
def test_monuseg_supervised_and_ssl_runs_share_one_setting(ratio: str) -> None:
    """SupOnly (monuseg/supervised_r*) and the SSL runs of a ratio differ only in the method."""
    sup = to_dict(load_experiment(REPO / "configs" / "monuseg" / f"supervised_r{ratio}.yaml"))
    for m in ("mt", "st", "ircr"):
        ssl = to_dict(load_experiment(REPO / "configs" / "monuseg" / "ssl" / f"{m}_r{ratio}.yaml"))
        assert {k: v for k, v in ssl.items() if k != "method"} == \
            {k: v for k, v in sup.items() if k != "method"}
    assert not list((REPO / "configs" / "monuseg" / "ssl").glob("sup_r*.yaml"))
