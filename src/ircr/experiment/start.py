"""How a run's consistency terms start: the paper's start or the stable one, and its length
under a compressed schedule.

* ``start: paper`` (protocol key, or on a method row) sets :data:`PAPER_START` — no supervised
  warm-up, no ramp-up, raw teacher HV targets (IRCR-Net paper §3; docs/method.md) — on every
  run whose method takes those options (``mean_teacher``, ``ircr`` and any plug-in with the same
  option names); methods without them (``supervised``, ``self_training``) are left unchanged.
  ``stable`` (default) leaves the configs' values (shipped: warm-up 100, ramp-up 200, clamped
  teacher HV). A method row's own ``overrides`` still win over both.
* When the planner compresses a run's schedule (``iterations: N`` or ``--budget-minutes``) by
  the factor ``f = planned iterations / iterations of the uncompressed schedule``, warm-up and
  ramp-up (absolute iterations) are scaled by the same ``f`` — they then end at the same
  fraction of training as before, like the lr steps — rounded half up, with a floor of
  :data:`WARMUP_FLOOR` / :data:`RAMPUP_FLOOR` iterations, never above the configured value
  (0 stays 0: the paper's start is kept).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from ircr.config import set_dotted

Start = Literal["paper", "stable"]

#: the paper's start: method option -> value (options a method lacks are skipped)
PAPER_START: dict[str, Any] = {"warmup_iterations": 0, "rampup_iterations": 0,
                               "clamp_teacher_hv": False}
#: shortest compressed supervised warm-up: the eval-mode EMA teacher is sane after ~15-20
#: iterations (docs/method.md, "The mechanism, verified")
WARMUP_FLOOR = 20
#: shortest compressed ramp-up (a ramp over fewer steps is a switch)
RAMPUP_FLOOR = 20
_FLOORS = {"warmup_iterations": WARMUP_FLOOR, "rampup_iterations": RAMPUP_FLOOR}


def _method_name(cfg: dict[str, Any]) -> str:
    return str((cfg.get("method") or {}).get("name", "supervised"))


def start_options(cfg: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """The run's values of the :data:`PAPER_START` options its method takes (defaults filled)."""
    import dataclasses

    from ircr.train.registry import options_type

    opt = options_type(_method_name(cfg), where)
    defaults = {f.name: f.default for f in dataclasses.fields(opt)}
    m = cfg.get("method") or {}
    return {k: m.get(k, defaults[k]) for k in PAPER_START if k in defaults}


def apply_start(cfg: dict[str, Any], start: Start, where: str) -> None:
    """Set the paper's start on ``cfg`` (a raw experiment config) when ``start == 'paper'``."""
    if start != "paper":
        return
    for key in start_options(cfg, where):
        set_dotted(cfg, f"method.{key}", PAPER_START[key], where)


def start_label(cfg: dict[str, Any]) -> str:
    """``paper`` / ``stable`` / ``custom`` (some of the paper's values), ``""`` for a method
    without these options."""
    vals = start_options(cfg)
    if not vals:
        return ""
    paper = [vals[k] == PAPER_START[k] for k in vals]
    return "paper" if all(paper) else "stable" if not any(paper) else "custom"


def scaled(value: int, factor: float, floor: int) -> int:
    """``value`` iterations scaled by ``factor`` (< 1), rounded half up, in [floor, value]."""
    if value <= 0 or factor >= 1:
        return value
    return min(value, max(floor, math.floor(value * factor + 0.5)))


def compressed_start(cfg: dict[str, Any], factor: float) -> dict[str, int]:
    """Warm-up / ramp-up iterations of a run whose schedule is scaled by ``factor``
    (only the options the method takes; empty for other methods)."""
    vals = start_options(cfg)
    return {k: scaled(int(vals[k]), factor, floor) for k, floor in _FLOORS.items() if k in vals}


def apply_compression(cfg: dict[str, Any], factor: float, where: str) -> dict[str, Any]:
    """Scale warm-up / ramp-up of ``cfg`` in place; returns what the plan records
    (``{}`` for a method without them): the new values, the configured ones and the factor."""
    before = {k: int(v) for k, v in start_options(cfg).items() if k in _FLOORS}
    if not before:
        return {}
    after = compressed_start(cfg, factor)
    for key, val in after.items():
        set_dotted(cfg, f"method.{key}", val, where)
    return {**after, "configured": before, "scale": round(min(factor, 1.0), 6)}


def describe(cfg: dict[str, Any]) -> str:
    """Short plan text: ``start paper`` / ``start stable, warm-up 20 + ramp-up 40``."""
    label = start_label(cfg)
    if not label:
        return ""
    vals = start_options(cfg)
    if label == "paper" or "warmup_iterations" not in vals:
        return f"start {label}"
    return (f"start {label}, warm-up {vals['warmup_iterations']} + ramp-up "
            f"{vals.get('rampup_iterations', 0)}")
