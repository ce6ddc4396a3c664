"""Experiment config schema: data, model, loss, train, method, postproc, eval.

An experiment is one YAML file validated by :func:`ircr.config.from_dict`: unknown keys and
values of the wrong type are one-line :class:`~ircr.errors.IrcrError` s naming the file and the
dotted key. :func:`load_experiment` adds two things on top:

* ``base: other.yaml`` (or a list of files) includes other config files, resolved relative to
  the including file; the including file's values override the included ones (nested mappings
  merge key by key, lists and scalars replace). Includes may nest; cycles are errors. ``base``
  is removed before validation, so every other unknown key is still an error.
* ``--set key.sub=value`` overrides (values parsed as YAML) are applied last.

Relative paths in a config (``data.dataset``, ``data.split`` when it is a file,
``method.prior``, ``model.pretrained``) are relative to the current working directory.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ircr.config import apply_overrides, bounded, from_dict, read_yaml, to_dict
from ircr.data.augment import AugmentConfig
from ircr.errors import IrcrError
from ircr.inference.evaluate import EvalConfig
from ircr.losses import LossConfig
from ircr.models.config import ModelConfig
from ircr.postproc.watershed import WBISParams

# upper bounds of sizes (a typo such as 1e8 must not allocate until the kernel kills the run)
MAX_PATCH = 4096  # px, a training patch side (paper: 256)
MAX_BATCH = 1024  # patches per iteration (paper: 4)
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits
MAX_EPOCHS = 1_000_000
MAX_ITERATIONS = 10**12


@dataclass
class DataConfig:
    """Training data.

    Attributes:
        dataset: folder of a prepared dataset (``ircr data prepare``). Required.
        split: split name inside the prepared dataset (e.g. ``r1-8_s0``) or path of a split
            file; it lists labelled / unlabelled patches and validation / test images.
        patch_size: training patch side P (pixels).
        context_margin: pixels read around each patch before the geometric augmentation, so
            rotation/scaling bring in real tissue and HV targets of nuclei cut by the patch
            border are right; targets are cropped back to P x P afterwards.
        batch_size: labelled patches per iteration (paper: 4); 0 = no labelled batch and no
            supervised term (methods with unlabelled data only, e.g. ``ircr adapt`` without
            labelled data).
        batch_size_unlabelled: unlabelled patches per iteration (paper: 4).
        workers: DataLoader worker processes (0 = load in the main process).
        augment: geometric + photometric augmentation (HoVer-Net ranges).
    """

    dataset: Path | None = None
    split: str = "default"
    patch_size: int = bounded(256, 16, MAX_PATCH)
    context_margin: int = bounded(100, 0, MAX_PATCH)
    batch_size: int = bounded(4, 0, MAX_BATCH)
    batch_size_unlabelled: int = bounded(4, 1, MAX_BATCH)
    workers: int = bounded(2, 0, 256)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    """Optimisation schedule and run mechanics.

    Attributes:
        epochs: number of epochs.
        iterations_per_epoch: iterations per epoch; None = one pass over the unlabelled
            patches (methods using unlabelled data) or over the labelled patches (supervised),
            ``floor(n / batch)`` and at least 1.
        max_iterations: stop after this many iterations in total (tests, smoke runs).
        lr: Adam learning rate. lr_steps: epochs after which lr is multiplied by lr_gamma.
        lr_schedule: "step" (lr_steps/lr_gamma, per epoch) or "poly" (per iteration i of T:
            a linear warm-up ``lr·(i+1)/W`` over the first W = floor(lr_warmup·T) iterations,
            then ``lr·(1 − i/T)^lr_power``; PG-FANet's schedule).
        optimizer: only "adam" (betas 0.9/0.999, no weight decay by default).
        amp: "auto" = bf16 autocast on CUDA when supported, off elsewhere; "bf16"; "off".
        seed: seeds model init, data order and augmentation (0 .. 2**32 - 1).
        deterministic: deterministic kernels (``torch.use_deterministic_algorithms``).
        checkpoint_every: also write ``checkpoints/last.pt`` every this many iterations
            (0 = only at epoch ends). checkpoint_minutes: also write it when this many
            minutes of wall time have passed since the last one (0 = off). Ctrl-C/SIGTERM
            always checkpoint at the next iteration boundary. keep_every: keep a copy
            ``epoch_NNNN.pt`` every this many epochs (0 = never).
        val_every: validate every this many epochs (0 = never; the last epoch always is
            validated when there are validation images).
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N", "mps".
        progress: show a tqdm progress bar.
        tensorboard: write TensorBoard events when tensorboard is installed.
        grad_clip: clip the gradient norm to this value (None = no clipping).
        channels_last: train with weights and inputs in channels_last (NHWC) memory layout
            (``train/memory_format.py``; faster convolutions on x86 CPUs, same values up to
            float rounding).
        init_weights: start the network from these full weights (a model folder or its
            weights.pt; the architecture of ``model:`` must match exactly) instead of a
            random / ``model.pretrained`` start; ignored when resuming (fine-tuning, adapt).
        sync_bn: under torchrun on GPUs, BatchNorm computes its batch statistics over all
            processes (``torch.nn.SyncBatchNorm``); an error on CPU, no effect in one process.
    """

    epochs: int = bounded(150, 1, MAX_EPOCHS)
    iterations_per_epoch: int | None = bounded(None, 1, MAX_ITERATIONS)
    max_iterations: int | None = bounded(None, 1, MAX_ITERATIONS)
    lr: float = 1e-4  # > 0, finite (no upper bound: tests provoke divergence with 1e6)
    lr_steps: list[int] = bounded(lo=1, hi=MAX_EPOCHS, factory=lambda: [100])
    lr_gamma: float = 0.1
    lr_schedule: Literal["step", "poly"] = "step"
    lr_warmup: float = bounded(0.0, 0, 1, hi_open=True)
    lr_power: float = bounded(0.9, 0, 100)
    optimizer: Literal["adam"] = "adam"
    weight_decay: float = bounded(0.0, 0)
    amp: Literal["auto", "bf16", "off"] = "auto"
    seed: int = bounded(10, 0, MAX_SEED)
    deterministic: bool = False
    checkpoint_every: int = bounded(0, 0, MAX_ITERATIONS)
    checkpoint_minutes: float = bounded(0.0, 0, 10**6)
    keep_every: int = bounded(0, 0, MAX_EPOCHS)
    val_every: int = bounded(1, 0, MAX_EPOCHS)
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    grad_clip: float | None = None
    channels_last: bool = False
    init_weights: Path | None = None
    sync_bn: bool = False


# The one flat option bag of every method before methods owned their options: a config
# written by an older version (a run folder's config.yaml, an experiment's plan.json) holds
# all of these keys whatever its method. ``experiment_from_dict(..., stored=True)`` drops the
# ones the method does not take (they never had an effect); user configs get the error.
LEGACY_METHOD_KEYS = frozenset({
    "ema_alpha", "gamma1", "gamma2", "miac_boundary_beta", "match_radius", "prior_tau",
    "piac_weight", "prior", "prior_combine", "mask_source", "piac", "miac", "rounds",
    "wbis_workers", "diagnostic_overlays", "warmup_iterations", "rampup_iterations",
    "clamp_teacher_hv", "guard_ratio"})


@dataclass
class MethodConfig:
    """The ``method:`` section: the method's name, shared keys and the method's own options.

    In YAML the section is flat (``method: {name: ircr, gamma1: 0.1}``): besides the shared
    keys below, its keys are the fields of the named method's ``options_type`` dataclass
    (:mod:`ircr.train.methods.base`), validated by :func:`ircr.config.from_dict`; a key the
    named method does not take is an error.

    Attributes:
        name: a built-in method (supervised, mean_teacher, self_training, ircr) or one
            registered with :func:`ircr.train.methods.register_method` before loading.
        weak_noise_std: Gaussian noise (fraction of 0..255) of the teacher's weak view of the
            unlabelled batches (loaders; methods with ``uses_unlabelled``).
        options: the named method's options (an ``options_type`` instance; None = defaults).
    """

    name: str = "supervised"
    weak_noise_std: float = 0.02
    options: Any = None

    SHARED: ClassVar[tuple[str, ...]] = ("name", "weak_noise_std")

    def __post_init__(self) -> None:
        if self.options is None:
            from ircr.train.registry import options_type

            self.options = options_type(self.name)()

    @classmethod
    def parse_config(cls, data: dict[str, Any], where: str = "config",
                     prefix: str = "method.") -> MethodConfig:
        """Validate a flat ``method:`` mapping against the named method's options."""
        import difflib

        from ircr.config import _convert
        from ircr.train.registry import options_type

        name = _convert(data.get("name", "supervised"), str, f"{prefix}name", where)
        opt_type = options_type(name, where)
        fields = {f.name for f in dataclasses.fields(opt_type)}
        rest = {k: v for k, v in data.items() if k not in cls.SHARED}
        unknown = sorted(set(rest) - fields, key=str)
        if unknown:
            valid = sorted(set(cls.SHARED) | fields)
            close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise IrcrError(f"{where}: unknown config key '{prefix}{unknown[0]}' for method "
                            f"'{name}' ({hint}valid keys: {', '.join(valid)})")
        noise = _convert(data.get("weak_noise_std", 0.02), float, f"{prefix}weak_noise_std",
                         where)
        if not 0 <= noise <= 1:
            raise IrcrError(f"{where}: config key '{prefix}weak_noise_std' must be in [0, 1] "
                            "(fraction of the 0..255 range)")
        return cls(name=name, weak_noise_std=noise,
                   options=from_dict(opt_type, rest, where=where, prefix=prefix))

    def config_dict(self) -> dict[str, Any]:
        """The flat YAML form (shared keys, then the method's options)."""
        return {"name": self.name, "weak_noise_std": self.weak_noise_std,
                **to_dict(self.options)}

    def shared_dict(self) -> dict[str, Any]:
        """The shared keys only (a sub-training's ``method:`` before its own options)."""
        return {k: v for k, v in self.config_dict().items() if k in self.SHARED}


def method_takes(name: str, key: str) -> bool:
    """Whether ``method.<key>`` is a valid key for method ``name`` (shared or its option)."""
    from ircr.train.registry import options_type

    fields = {f.name for f in dataclasses.fields(options_type(name))}
    return key in MethodConfig.SHARED or key in fields


@dataclass
class ExperimentConfig:
    """One training experiment."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    postproc: WBISParams = field(default_factory=WBISParams)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, where: str = "config") -> None:
        """Cross-field checks with one-line errors naming ``where`` and the dotted key."""
        d, t = self.data, self.train
        if d.dataset is None:
            raise IrcrError(f"{where}: missing required config key 'data.dataset' (a prepared "
                            "dataset folder, see 'ircr data prepare')")
        checks: list[tuple[bool, str, str]] = [
            (d.patch_size >= 16, "data.patch_size", "must be >= 16"),
            (d.context_margin >= 0, "data.context_margin", "must be >= 0"),
            (d.batch_size >= 0, "data.batch_size", "must be >= 0 (0 = no labelled batch)"),
            (d.batch_size_unlabelled >= 1, "data.batch_size_unlabelled", "must be >= 1"),
            (d.workers >= 0, "data.workers", "must be >= 0"),
            (t.epochs >= 1, "train.epochs", "must be >= 1"),
            (t.iterations_per_epoch is None or t.iterations_per_epoch >= 1,
             "train.iterations_per_epoch", "must be >= 1 or null"),
            (t.max_iterations is None or t.max_iterations >= 1,
             "train.max_iterations", "must be >= 1 or null"),
            (t.lr > 0, "train.lr", "must be > 0"),
            (0 < t.lr_gamma <= 1, "train.lr_gamma", "must be in (0, 1]"),
            (all(s >= 1 for s in t.lr_steps), "train.lr_steps", "epochs must be >= 1"),
            (t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0"),
            (t.checkpoint_minutes >= 0, "train.checkpoint_minutes", "must be >= 0"),
            (t.keep_every >= 0, "train.keep_every", "must be >= 0"),
            (bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device)), "train.device",
             "must be auto, cpu, cuda, cuda:N or mps"),
            (t.val_every >= 0, "train.val_every", "must be >= 0"),
            (t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be > 0 or null"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise IrcrError(f"{where}: config key '{key}' {problem}")
        self._check_batch_memory(where)
        try:
            self.postproc.effective()  # validates post-processing parameters
        except IrcrError as exc:
            raise IrcrError(f"{where}: {exc}") from None

    def _check_batch_memory(self, where: str) -> None:
        """Estimate a training batch's input before anything is allocated (one line if too big).

        Each patch is read with its context margin on every side; the network's activations
        are a multiple of the input, so the input alone must stay under MAX_BATCH_PIXELS.
        """
        from ircr.inference.predict import MAX_BATCH_PIXELS

        d = self.data
        side = d.patch_size + 2 * d.context_margin
        n = d.batch_size + d.batch_size_unlabelled
        if side * side * n > MAX_BATCH_PIXELS:
            gib = side * side * n * 3 * 4 / 2**30
            raise IrcrError(f"{where}: config key 'data.batch_size' {n} patches of {side} x "
                            f"{side} px (patch_size + 2 x context_margin, labelled + "
                            f"unlabelled) need {gib:.1f} GiB per iteration for the input alone "
                            f"(at most {MAX_BATCH_PIXELS} px); lower the batch sizes or "
                            "patch_size")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


def resolve_includes(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and resolve its ``base:`` includes (see module docstring)."""
    p = Path(path).resolve()
    if p in _stack:
        chain = " -> ".join(s.name for s in (*_stack, p))
        raise IrcrError(f"{path}: config 'base' includes form a cycle ({chain})")
    data = read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise IrcrError(f"{path}: config key 'base' must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for b in bases:
        inc = Path(path).parent / b
        if not inc.is_file():
            raise IrcrError(f"{path}: config key 'base': included file not found: {inc}")
        merged = _merge(merged, resolve_includes(inc, (*_stack, p)))
    return _merge(merged, data)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, include-resolve, override and validate an experiment config file."""
    data = resolve_includes(path)
    for item in overrides or []:
        check_override_key(item)
    apply_overrides(data, list(overrides or []), where=f"{path} (--set)")
    try:
        return from_dict(ExperimentConfig, data, where=str(path))
    except IrcrError as exc:  # a bad value given on the command line: name the option
        for item in reversed(list(overrides or [])):
            key = item.split("=", 1)[0].strip()
            if f"'{key}'" in str(exc):
                raise IrcrError(f"--set {item}: " + str(exc).split(": ", 1)[-1]) from None
        raise


def check_override_key(item: str) -> None:
    """A ``--set KEY=VALUE`` whose KEY is not in the schema: IrcrError naming the option.

    Unknown keys in the file itself are reported by :func:`ircr.config.from_dict` (naming the
    file); this catches typos on the command line first, with a suggestion.
    """
    import difflib
    import typing

    key = item.split("=", 1)[0].strip()
    cls: Any = ExperimentConfig
    done: list[str] = []
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise IrcrError(f"--set {item}: '{'.'.join(done)}' is a value, not a section")
        if hasattr(cls, "parse_config"):  # keys depend on the method: checked when loading
            return
        hints = typing.get_type_hints(cls)
        if part not in hints:
            prefix = ".".join(done + [""])
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else \
                f" (valid: {', '.join(prefix + h for h in hints)})"
            raise IrcrError(f"--set {item}: unknown config key '{prefix}{part}'{hint}")
        done.append(part)
        cls = hints[part]


def experiment_from_dict(data: dict[str, Any], where: str = "config",
                         stored: bool = False) -> ExperimentConfig:
    """Validate an already-read mapping.

    ``stored=True`` for a config written by the package (a run folder's ``config.yaml``, an
    experiment's plan): older versions wrote every method's options into ``method:``; the
    ones of other methods (:data:`LEGACY_METHOD_KEYS`) are dropped before validation.
    """
    method = data.get("method")
    if stored and isinstance(method, dict) and isinstance(method.get("name", ""), str):
        from ircr.train.registry import known_methods, options_type

        name = method.get("name", "supervised")
        if name in known_methods():
            fields = {f.name for f in dataclasses.fields(options_type(name))}
            data = {**data, "method": {k: v for k, v in method.items()
                                       if k in fields or k not in LEGACY_METHOD_KEYS}}
    return from_dict(ExperimentConfig, data, where=where)
