"""Experiment protocol: typed YAML naming methods, label ratios and seeds; expansion into runs.

A protocol file (unknown keys and wrong types are one-line errors, like every config)::

    config: ../monuseg/ssl/base.yaml     # base experiment config (relative to this file)
    dataset: prepared/monuseg            # prepared dataset (relative to the working directory)
    ratios: ["1/32", "1/16", "1/8", "1/4"]
    split_seeds: [0, 1, 2]               # seeds of the labelled subsets (ircr data split)
    train_seeds: [10, 11, 12]            # model init / data order; paired with split_seeds
    methods:
      - name: supervised                 # row label; also the plug-in name unless `method:`
      - name: mean_teacher
      - {name: fullsup, method: supervised, ratios: ["1"]}
      - {name: ircr_r1, method: ircr, overrides: {method.match_radius: 1.0}}
      - {name: scheme2, config: ../monuseg/ssl/ablation/t3_scheme2.yaml}
      - {name: mt_stable, method: mean_teacher, start: stable}
    start: paper                         # paper | stable (default): experiment.start
    test_dataset: prepared/monuseg_test  # optional: any prepared dataset with labels
    evaluate: [student, teacher]
    # or each split's own test images (BASS: 6:2:2 by image), scored per 256 px patch:
    # test_fraction: 0.2
    # test_unit: patch
    reference: supervised                # significance: rows compared against this one

Per run the experiment config is: the method's ``config`` (or the protocol's), with the
protocol ``overrides`` (dotted keys), ``data.dataset``, ``data.split =
ratio_<r>_seed<s>[_val<v>][_test<t>]`` (created with :func:`ircr.data.prepare.add_split`
when missing), ``train.seed``, ``method.name``, the row's ``start`` (or the protocol's:
``paper`` sets the paper's warm-up / ramp-up / teacher-HV options where the method has them,
:mod:`ircr.experiment.start`) and then the method's own ``overrides`` (they win over
everything, budgets included). ``seeds: paired`` zips split and train seeds (a single value
is repeated); ``crossed`` runs every combination.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ircr.config import from_dict, read_yaml, set_dotted
from ircr.data.splits import parse_ratio, ratio_text, split_name
from ircr.errors import IrcrError
from ircr.experiment.start import Start, apply_start
from ircr.train.config import ExperimentConfig, experiment_from_dict, resolve_includes

EvalModel = Literal["student", "teacher"]
TestUnit = Literal["image", "patch"]


@dataclass
class MethodSpec:
    """One row of the report.

    Attributes:
        name: row label and run-folder prefix (letters, digits, ``_``, ``-``).
        method: registered method plug-in (default: ``name``, or the ``config``'s method).
        config: experiment config of this row (default: the protocol's), relative to the
            protocol file — e.g. an ablation config.
        overrides: dotted config keys applied last, e.g. ``{method.match_radius: 1.0}``.
        ratios: label ratios of this row (default: the protocol's), e.g. ``["1"]`` (FullSup).
        start: ``paper`` / ``stable`` for this row (default: the protocol's ``start``).
    """

    name: str = ""
    method: str | None = None
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    ratios: list[str] | None = None
    start: Start | None = None


@dataclass
class Protocol:
    """Methods x label ratios x seeds, the budget rule and what to evaluate.

    Attributes:
        config: base experiment config (relative to the protocol file). Required.
        dataset: prepared training dataset (default: the config's ``data.dataset``).
        methods, ratios, split_seeds, train_seeds, seeds: the run grid (module docstring).
        val_fraction: validation fraction of the split files (``ircr data split``).
        test_dataset / test_split: evaluate the final models on these images (``all`` = every
            labelled image, ``test`` = images marked as test, or a split name: its val images).
        test_fraction: > 0 = every split also holds out this fraction of the labelled images
            by image, seeded by the split seed (BASS's 6:2:2: ``val_fraction`` 0.2,
            ``test_fraction`` 0.2), and each run is tested on its own split's test images
            (then ``test_dataset`` must not be set).
        test_unit: ``image`` = whole images; ``patch`` = every patch of the dataset's grid on
            its own, metrics averaged over patches (the BASS paper's unit).
        reference: row name the report's significance tests compare every other row with
            (default: ``supervised`` when the protocol has that row).
        bootstrap: resamples of the report's 95 % bootstrap intervals (seeded).
        evaluate: which models of a run to evaluate (a method without a teacher has only
            the student).
        budget: ``equal`` = every run of a ratio gets the semi-supervised epoch length
            (``floor(#unlabelled / batch_size_unlabelled)``) as iterations per epoch, so the
            supervised baseline trains as long as the others; ``native`` = each method's own.
        iterations: fixed total iterations per run (lr schedule compressed); None = the
            config's epochs. ``--budget-minutes`` replaces it by a fitted count.
        budget_epochs: epochs of a compressed schedule (rounded to keep the lr steps exact).
        warmup_iterations: optimiser steps per method in the ``--budget-minutes`` warm-up.
        start: ``paper`` = the paper's consistency start (no warm-up, no ramp-up, raw teacher
            HV) for the methods with those options, others unchanged; ``stable`` = the
            configs' values (:mod:`ircr.experiment.start`). A method row may set its own.
        overrides: dotted config keys for every run. plugins: modules imported first (they
            register extra methods). description: free text for the report.
    """

    config: Path | None = None
    dataset: Path | None = None
    methods: list[MethodSpec] = field(default_factory=list)
    ratios: list[str] = field(default_factory=lambda: ["1/8"])
    split_seeds: list[int] = field(default_factory=lambda: [0])
    train_seeds: list[int] = field(default_factory=lambda: [10])
    seeds: Literal["paired", "crossed"] = "paired"
    val_fraction: float = 0.1
    test_dataset: Path | None = None
    test_split: str = "all"
    test_fraction: float = 0.0
    test_unit: TestUnit = "image"
    reference: str | None = None
    bootstrap: int = 10000
    evaluate: list[EvalModel] = field(default_factory=lambda: ["student", "teacher"])
    budget: Literal["equal", "native"] = "equal"
    iterations: int | None = None
    budget_epochs: int = 10
    warmup_iterations: int = 8
    start: Start = "stable"
    overrides: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    description: str = ""

    def validate(self, where: str = "protocol") -> None:
        """Cross-field checks (one-line IrcrError naming ``where`` and the key)."""
        if self.config is None:
            raise IrcrError(f"{where}: missing required protocol key 'config'")
        if not self.methods:
            raise IrcrError(f"{where}: protocol key 'methods' must list at least one method")
        names = [m.name for m in self.methods]
        for i, n in enumerate(names):
            if not n or not all(c.isalnum() or c in "_-" for c in n):
                raise IrcrError(f"{where}: protocol key 'methods[{i}].name' must be a non-empty "
                                f"word (letters, digits, _ or -), got {n!r}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise IrcrError(f"{where}: protocol key 'methods': duplicate name {dup[0]!r}")
        for key, vals in (("ratios", self.ratios), *(
                (f"methods[{i}].ratios", m.ratios or []) for i, m in enumerate(self.methods))):
            for v in vals:
                try:
                    parse_ratio(v)
                except IrcrError:
                    raise IrcrError(f"{where}: protocol key '{key}': bad label ratio {v!r} "
                                    "(use 1/8, 0.125 or 1)") from None
        if not self.ratios or not self.split_seeds or not self.train_seeds:
            raise IrcrError(f"{where}: protocol keys 'ratios', 'split_seeds' and 'train_seeds' "
                            "must not be empty")
        n_s, n_t = len(self.split_seeds), len(self.train_seeds)
        if self.seeds == "paired" and n_s != n_t and 1 not in (n_s, n_t):
            raise IrcrError(f"{where}: protocol keys 'split_seeds' ({n_s}) and 'train_seeds' "
                            f"({n_t}) must have the same length with seeds: paired")
        self._check_duplicates(where)
        for ok, key, problem in (
            (0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)"),
            (self.iterations is None or self.iterations >= 1, "iterations", "must be >= 1"),
            (self.budget_epochs >= 1, "budget_epochs", "must be >= 1"),
            (self.warmup_iterations >= 3, "warmup_iterations", "must be >= 3"),
            (bool(self.evaluate), "evaluate", "must name student and/or teacher"),
            (0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
             "test_fraction", "must be in [0, 1) and leave images to train on "
             "(val_fraction + test_fraction < 1)"),
            (self.test_fraction == 0 or self.test_dataset is None, "test_fraction",
             "holds out test images of the training dataset: do not set test_dataset too"),
            (self.test_fraction == 0 or self.test_split in ("all", "test"), "test_split",
             "must be 'test' (or left out) with test_fraction: each run's split's test images"),
            (self.reference is None or self.reference in names, "reference",
             f"must name a row of 'methods' ({', '.join(names)}), got {self.reference!r}"),
            (100 <= self.bootstrap <= 10**6, "bootstrap", "must be in [100, 1000000]"),
        ):
            if not ok:
                raise IrcrError(f"{where}: protocol key '{key}' {problem}")

    def reference_row(self) -> str | None:
        """The significance tests' reference row: ``reference`` or ``supervised`` if listed."""
        if self.reference is not None:
            return self.reference
        return "supervised" if any(m.name == "supervised" for m in self.methods) else None

    def _check_duplicates(self, where: str) -> None:
        """Refuse two runs with one run id: a ratio or a (split, train) seed pair twice."""
        for key, vals in (("ratios", self.ratios), *(
                (f"methods[{i}].ratios", m.ratios or []) for i, m in enumerate(self.methods))):
            seen: dict[str, str] = {}
            for v in vals:
                text = ratio_text(parse_ratio(v))
                if text in seen:
                    raise IrcrError(f"{where}: protocol key '{key}': {seen[text]!r} and {v!r} "
                                    f"are the same label ratio ({text}); list each ratio once")
                seen[text] = v
        pairs = self.seed_pairs()
        dup = next((p for i, p in enumerate(pairs) if p in pairs[:i]), None)
        if dup is not None:
            raise IrcrError(f"{where}: protocol keys 'split_seeds' / 'train_seeds': the seed "
                            f"pair (split {dup[0]}, train {dup[1]}) appears twice; each "
                            "repetition needs its own seeds")

    def seed_pairs(self) -> list[tuple[int, int]]:
        """(split seed, train seed) of every repetition."""
        if self.seeds == "crossed":
            return [(s, t) for s in self.split_seeds for t in self.train_seeds]
        n = max(len(self.split_seeds), len(self.train_seeds))
        ss = self.split_seeds * n if len(self.split_seeds) == 1 else self.split_seeds
        ts = self.train_seeds * n if len(self.train_seeds) == 1 else self.train_seeds
        return list(zip(ss, ts, strict=True))


@dataclass
class RunSpec:
    """One training run of the grid, with its full experiment config (before budgets)."""

    run_id: str
    method: str
    ratio: str
    split_seed: int
    train_seed: int
    config: dict[str, Any]
    method_overrides: dict[str, Any]

    def experiment(self, where: str) -> ExperimentConfig:
        """The validated experiment config of this run."""
        return experiment_from_dict(copy.deepcopy(self.config), where=where)


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol file; imports its ``plugins``; paths resolved."""
    p = Path(path)
    if not p.is_file():
        raise IrcrError(f"{p}: protocol file not found")
    proto = from_dict(Protocol, read_yaml(p), where=str(p))
    import_plugins(proto.plugins, str(p))
    assert proto.config is not None
    proto.config = _beside(p, proto.config)
    for m in proto.methods:
        if m.config is not None:
            m.config = _beside(p, m.config)
    return proto


def import_plugins(modules: list[str], where: str) -> None:
    """Import plug-in modules (they register methods) with a one-line error when missing."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise IrcrError(f"{where}: protocol key 'plugins': cannot import {mod!r} "
                            f"({exc})") from None


def _beside(protocol: Path, rel: Path) -> Path:
    out = rel if rel.is_absolute() else protocol.parent / rel
    if not out.is_file():
        raise IrcrError(f"{protocol}: config file not found: {out}")
    return out


def run_id(method: str, ratio: str, split_seed: int, train_seed: int) -> str:
    """Run-folder name, e.g. ``ircr_r1-8_s0_t10``."""
    return f"{method}_r{ratio.replace('/', '-')}_s{split_seed}_t{train_seed}"


def expand(proto: Protocol, where: str = "protocol") -> list[RunSpec]:
    """Every run of the protocol, in report order (method, ratio, seeds); configs validated."""
    runs: list[RunSpec] = []
    for i, m in enumerate(proto.methods):
        cfg_path = m.config or proto.config
        assert cfg_path is not None
        base = resolve_includes(cfg_path)
        for raw_ratio in m.ratios or proto.ratios:
            ratio = ratio_text(parse_ratio(raw_ratio))
            for s_seed, t_seed in proto.seed_pairs():
                d = copy.deepcopy(base)
                for key, val in proto.overrides.items():
                    set_dotted(d, key, val, f"{where}: overrides")
                if proto.dataset is not None:
                    set_dotted(d, "data.dataset", str(proto.dataset), where)
                split = split_name(parse_ratio(ratio), s_seed, proto.val_fraction,
                                   proto.test_fraction)
                set_dotted(d, "data.split", split, where)
                set_dotted(d, "train.seed", t_seed, where)
                if m.method is not None or m.config is None:
                    set_dotted(d, "method.name", m.method or m.name, where)
                apply_start(d, m.start or proto.start, f"{where}: methods[{i}] ({m.name})")
                for key, val in m.overrides.items():
                    set_dotted(d, key, val, f"{where}: methods[{i}].overrides")
                spec = RunSpec(run_id(m.name, ratio, s_seed, t_seed), m.name, ratio, s_seed,
                               t_seed, d, dict(m.overrides))
                _check_supported(d, f"{where}: methods[{i}] ({m.name})")
                spec.experiment(f"{where}: methods[{i}] ({m.name}, ratio {ratio})")
                if any(r.run_id == spec.run_id for r in runs):
                    raise IrcrError(f"{where}: run {spec.run_id} is planned twice (same method, "
                                    "ratio and seeds); list each once")
                runs.append(spec)
    return runs


# methods the experiment runner cannot run (none at present; BASS was one until issue 25:
# its stages keep their own schedules, docs/experiment.md "BASS rows")
UNSUPPORTED_METHODS: dict[str, str] = {}


def _check_supported(cfg: dict[str, Any], where: str) -> None:
    name = str(cfg.get("method", {}).get("name", "supervised"))
    if name in UNSUPPORTED_METHODS:
        raise IrcrError(f"{where}: method '{name}' is not supported by ircr experiment yet: "
                        f"{UNSUPPORTED_METHODS[name]}")
