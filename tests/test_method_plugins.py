"""The closed method plug-in: a method defined here (not in the package) trains in the real
trainer with its own typed options, its own sub-training and raw instance maps; the method
section of a config is validated against the named method's options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from ircr.config import read_yaml, to_dict
from ircr.data.prepare import prepare_dataset
from ircr.errors import IrcrError
from ircr.train.config import experiment_from_dict, load_experiment
from ircr.train.methods import Method, SubRun, known_methods, register_method
from ircr.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@dataclass
class EchoOptions:
    """Options of the test method."""

    scale: float = 1.0
    sub_iterations: int = 0

    def validate(self, where: str = "config") -> None:
        if self.scale <= 0:
            raise IrcrError(f"{where}: config key 'method.scale' must be > 0")


@register_method("test_plugin_echo")
class Echo(Method):
    """L_sup times ``scale``; records the batches it saw; may spawn a supervised sub-run."""

    options_type = EchoOptions
    options: EchoOptions
    uses_instances = True

    def setup(self) -> None:
        self.batches: list[dict[str, Tensor]] = []
        self.sub: SubRun | None = None

    def before_training(self) -> None:
        if self.options.sub_iterations:
            self.sub = self.trainer.spawn("supervised", self.trainer.run_dir / "sub", {
                "train.max_iterations": self.options.sub_iterations, "train.seed": 3})
            self.sub.run()

    def train_step(self, labelled: dict[str, Tensor], unlabelled: dict[str, Tensor] | None
                   ) -> tuple[Tensor, dict[str, float]]:
        self.batches.append({k: v.clone() for k, v in labelled.items()})
        out = self.trainer.model(labelled["image"])
        loss, _ = self.trainer.supervised_loss(out, labelled)
        return loss * self.options.scale, {"sup": float(loss.detach())}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 4, "size": 96}, patch=64,
                    ratio="1/2", val_fraction=0.25)
    return out


def _data(ds: Path, **method: Any) -> dict[str, Any]:
    data = read_yaml(REPO / "configs" / "tiny_synthetic.yaml")
    data["data"].update(dataset=str(ds), split="ratio_1-2_seed0_val0.25")
    data["train"].update(progress=False, epochs=1, iterations_per_epoch=2)
    data["eval"].update(max_images=1)
    data["method"] = method
    return data


def test_a_method_defined_outside_the_package_trains(synth: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert "test_plugin_echo" in known_methods()
    cfg = experiment_from_dict(_data(synth, name="test_plugin_echo", scale=2.0,
                                     sub_iterations=1), "test")
    assert isinstance(cfg.method.options, EchoOptions) and cfg.method.options.scale == 2.0
    tr = Trainer(cfg, tmp_path / "run", config_source="test")
    assert isinstance(tr.method, Echo)
    model_dir = tr.run()
    assert tr.iteration == 2 and (model_dir / "model.yaml").is_file()
    # its options round-trip through the run folder's config.yaml (flat under method:)
    stored = read_yaml(tmp_path / "run" / "config.yaml")["method"]
    assert stored == {"name": "test_plugin_echo", "weak_noise_std": 0.02, "scale": 2.0,
                      "sub_iterations": 1}
    # the sub-training: another method, default options, its own overrides, its own folder
    sub = tr.method.sub
    assert sub is not None and sub.iteration == 1 and sub.cfg.train.seed == 3
    assert to_dict(sub.cfg.method) == {"name": "supervised", "weak_noise_std": 0.02}
    assert (tmp_path / "run" / "sub" / "model" / "model.yaml").is_file()
    # raw instance maps: the labels the NP target was computed from (after augmentation)
    for b in tr.method.batches:
        inst, np_t = b["inst"].numpy(), b["np"].numpy()
        assert inst.shape == np_t.shape and inst.dtype == np.int64
        assert np.array_equal(np_t, (inst > 0).astype(np.int64))
        assert len(np.unique(inst)) > 2  # several nuclei, ids kept


def test_batches_have_no_instance_maps_unless_asked(synth: Path, tmp_path: Path) -> None:
    from ircr.train import loaders

    cfg = experiment_from_dict(_data(synth, name="supervised"), "test")
    tr = Trainer(cfg, tmp_path / "run", config_source="test")
    data = loaders.IterationData(tr.dataset, tr.split, cfg, None, False, "test")
    assert "inst" not in data.set[0]["labelled"]


@pytest.mark.parametrize("method,problem", [
    ({"name": "test_plugin_echo", "scale": "big"}, r"'method.scale' must be float"),
    ({"name": "test_plugin_echo", "scale": -1.0}, r"'method.scale' must be > 0"),
    ({"name": "test_plugin_echo", "gamma1": 0.1}, r"unknown config key 'method.gamma1' for "
                                                  r"method 'test_plugin_echo'"),
    ({"name": "supervised", "rounds": 2}, r"unknown config key 'method.rounds' for method "
                                          r"'supervised'"),
    ({"name": "ircr", "match_radus": 2.0}, r"did you mean 'method.match_radius'"),
    ({"name": "ircr", "piac": "maybe"}, r"'method.piac' must be bool"),
    ({"name": "mean_teacher", "ema_alpha": 2.0}, r"'method.ema_alpha' must be in \[0, 1\]"),
    ({"name": "self_training", "rounds": 0}, r"'method.rounds' must be >= 1"),
    ({"name": 3}, r"'method.name' must be str"),
])
def test_method_section_is_validated_against_the_method(synth: Path, method: dict[str, Any],
                                                         problem: str) -> None:
    with pytest.raises(IrcrError, match=problem) as info:
        experiment_from_dict(_data(synth, **method), "exp.yaml")
    assert str(info.value).startswith("exp.yaml: ") and "\n" not in str(info.value)


def test_set_names_a_bad_method_option(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {dataset: d}\nmethod: {name: ircr}\n")
    assert load_experiment(p, ["method.gamma2=5"]).method.options.gamma2 == 5.0
    with pytest.raises(IrcrError, match=r"^--set method.gama2=5: unknown config key "
                                        r"'method.gama2' for method 'ircr'"):
        load_experiment(p, ["method.gama2=5"])


def test_stored_configs_of_the_one_bag_layout_still_load(synth: Path) -> None:
    """A run folder's config.yaml of an older version held every method's options."""
    legacy = {"name": "supervised", "ema_alpha": 0.95, "gamma1": 0.1, "gamma2": 100.0,
              "miac_boundary_beta": 0.5, "match_radius": 1.5, "prior_tau": 0.35,
              "piac_weight": 2.0, "prior": None, "prior_combine": "mean",
              "mask_source": "current", "piac": True, "miac": True, "weak_noise_std": 0.05,
              "rounds": 1, "wbis_workers": 0, "diagnostic_overlays": 0,
              "warmup_iterations": 100, "rampup_iterations": 200, "clamp_teacher_hv": True,
              "guard_ratio": 100.0}
    cfg = experiment_from_dict(_data(synth, **legacy), "old/config.yaml", stored=True)
    assert to_dict(cfg.method) == {"name": "supervised", "weak_noise_std": 0.05}
    ircr = experiment_from_dict(_data(synth, **{**legacy, "name": "ircr", "gamma1": 0.3}),
                                "old/config.yaml", stored=True)
    assert ircr.method.options.gamma1 == 0.3 and ircr.method.options.warmup_iterations == 100
    with pytest.raises(IrcrError, match="unknown config key 'method.clamp_teacher_hv'"):
        experiment_from_dict(_data(synth, **legacy), "user.yaml")  # a user config: strict
