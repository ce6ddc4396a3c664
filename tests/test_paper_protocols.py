"""The paper's ablation protocols (IRCR Tables 3 and 4 on MoNuSAC 1/32): load, expand, plan.

The shipped protocol files are read as they are; only the prepared dataset is swapped for a
small synthetic one (MoNuSAC is not in ../shared/data) and the test set dropped, so the dry
run shows the plan a real run would make: 50 epochs with the lr step at 25, every row of a
table on the same iteration budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ircr.data.prepare import prepare_dataset
from ircr.experiment.protocol import expand, load_protocol
from ircr.experiment.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = REPO / "configs" / "protocols"

# method overrides that define each row (paper Table 3 / Table 4; ircr-method.md §4)
MSE = {"piac": False, "miac": False}
MIAC = {"piac": False, "miac": True, "miac_boundary_beta": 0.5}
TABLE3 = {
    "suponly": ("supervised", {}),
    "scheme1": ("ircr", MSE),
    "scheme2": ("ircr", {**MIAC, "miac_boundary_beta": 0.0, "match_radius": 1.5}),
    "scheme3": ("ircr", {**MIAC, "match_radius": 1.5}),
    "ours": ("ircr", {"piac": True, "miac": True, "miac_boundary_beta": 0.5,
                      "match_radius": 1.5, "prior_tau": 0.35, "piac_weight": 2.0}),
}
TABLE4 = {
    "no_matching": ("ircr", MSE),
    **{name: ("ircr", {**MIAC, "match_radius": r}) for name, r in
       (("r0p1", 0.1), ("r1p0", 1.0), ("r1p5", 1.5), ("r2p0", 2.0), ("r3p0", 3.0))},
}


@pytest.mark.parametrize("name,rows", [("monusac_table3", TABLE3), ("monusac_table4", TABLE4)])
def test_monusac_ablation_protocols_expand_as_the_paper(name: str,
                                                        rows: dict[str, tuple[str, dict]]) -> None:
    path = PROTOCOLS / f"{name}.yaml"
    proto = load_protocol(path)
    runs = expand(proto, str(path))
    assert [m.name for m in proto.methods] == list(rows)
    assert len(runs) == 3 * len(rows)  # 1/32 only, 3 paired seeds
    assert {(r.split_seed, r.train_seed) for r in runs} == {(0, 10), (1, 11), (2, 12)}
    for r in runs:
        cfg = r.config
        assert r.ratio == "1/32"
        assert cfg["data"]["dataset"] == "prepared/monusac"
        assert cfg["data"]["split"] == f"ratio_1-32_seed{r.split_seed}"
        t = cfg["train"]
        assert (t["epochs"], t["lr_steps"], t["lr_gamma"], t["lr"], t["optimizer"]) == \
            (50, [25], 0.1, 1e-4, "adam")
        assert (cfg["data"]["batch_size"], cfg["data"]["patch_size"]) == (4, 256)
        method, opts = rows[r.method]
        assert cfg["method"]["name"] == method
        for key, val in opts.items():
            assert cfg["method"][key] == val, (r.run_id, key)
        # the typed config agrees (defaults filled in: gamma1 0.1, gamma2 100, tau 0.35)
        exp = r.experiment(r.run_id)
        if method == "ircr":
            o = exp.method.options
            assert (o.gamma1, o.gamma2, o.prior_tau, o.piac_weight) == (0.1, 100.0, 0.35, 2.0)
    assert str(proto.test_dataset) == "prepared/monusac_test"


def test_monuseg_variants_say_they_are_not_the_papers() -> None:
    for table in ("table3", "table4"):
        text = (PROTOCOLS / f"monuseg_{table}.yaml").read_text()
        assert f"monusac_{table}.yaml" in text and "not the paper" in text


@pytest.fixture(scope="module")
def monusac_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic 512 px images, 256 px patches: 9 train images (36 patches) + 1 val."""
    out = tmp_path_factory.mktemp("paperproto") / "ds"
    prepare_dataset("synthetic", None, out, options={"n_images": 10, "size": 512}, patch=256,
                    ratio="1/32", val_fraction=0.1)
    return out


@pytest.mark.parametrize("name,n_rows", [("monusac_table3", 5), ("monusac_table4", 6)])
def test_monusac_ablation_dry_run_plans_50_epochs(name: str, n_rows: int, monusac_like: Path,
                                                  tmp_path: Path) -> None:
    doc = yaml.safe_load((PROTOCOLS / f"{name}.yaml").read_text())
    doc["config"] = str((PROTOCOLS / doc["config"]).resolve())
    doc["dataset"] = str(monusac_like)
    doc.pop("test_dataset")
    proto = tmp_path / f"{name}.yaml"
    proto.write_text(yaml.safe_dump(doc))
    lines: list[str] = []
    summary = run_experiment(proto, tmp_path / "out", dry_run=True, log=lines.append)
    assert summary == {"planned": 3 * n_rows}
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    plan = next(s for s in lines if s.startswith("plan: "))
    rows = [s.split() for s in plan.splitlines() if s.startswith("  ") and " it = " in s]
    assert len(rows) == 3 * n_rows
    # equal budgets: one SSL epoch = floor(unlabelled / 4) iterations for every row, 50 of them
    split = yaml.safe_load((monusac_like / "splits" / "ratio_1-32_seed0.yaml").read_text())
    assert len(split["labelled_patches"]) == 1
    ipe = len(split["unlabelled_patches"]) // 4
    text = "\n".join(" ".join(r) for r in rows)
    assert text.count(f"{50 * ipe} it = 50 ep x {ipe} it, lr steps [25]") == 3 * n_rows, plan


def test_float32_override_of_a_paper_protocol(tmp_path: Path) -> None:
    """The header's paper-exact numerics: overrides {train.amp: "off"} reach every run."""
    doc = yaml.safe_load((PROTOCOLS / "monusac_table3.yaml").read_text())
    doc["config"] = str((PROTOCOLS / doc["config"]).resolve())
    doc["overrides"] = {"train.amp": "off"}
    path = tmp_path / "t3.yaml"
    path.write_text(yaml.safe_dump(doc))
    runs = expand(load_protocol(path), str(path))
    assert {r.experiment(r.run_id).train.amp for r in runs} == {"off"}
