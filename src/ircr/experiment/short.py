"""Runs too short to mean anything: said loudly in the plan and in the report.

A run is *too short* when it has fewer than :data:`MIN_ITERATIONS` optimiser steps, or, for a
semi-supervised method with a consistency warm-up, when it ends before its unsupervised terms
are fully on (``warmup_iterations + rampup_iterations`` of its final config, i.e. after a budget
compressed them, :mod:`ircr.experiment.start`): such a run is the supervised baseline plus
noise, whatever its row is called.

Why 200: on real MoNuSeg (docs/results.md) 60 iterations leave half of the seeds predicting no
nucleus at all (AJI 0.000), 120 iterations reach AJI 0.08, and 200-300 iterations are the
shortest runs that segment on every seed tried (AJI 0.15-0.38); the tiny synthetic test set
needs ~40. Below 200 the numbers check the pipeline, they do not compare methods.
"""

from __future__ import annotations

from typing import Any

MIN_ITERATIONS = 200


def short_reason(config: dict[str, Any], iterations: int) -> str | None:
    """Why a run of ``iterations`` steps with this experiment config is too short, or None."""
    from ircr.train.methods import get_method

    m = config.get("method", {}) or {}
    cls = get_method(str(m.get("name", "supervised")))
    default = cls.options_type()
    if cls.uses_unlabelled and hasattr(default, "warmup_iterations"):
        warm = int(m.get("warmup_iterations", default.warmup_iterations))
        ramp = int(m.get("rampup_iterations", getattr(default, "rampup_iterations", 0)))
        if iterations < warm + ramp:
            return (f"{iterations} iterations < consistency warm-up {warm} + ramp-up {ramp}: "
                    "the unsupervised terms never reach full weight")
    if iterations < MIN_ITERATIONS:
        return f"{iterations} iterations < {MIN_ITERATIONS} (the stated minimum)"
    return None


def short_runs(entries: list[dict[str, Any]]) -> dict[str, str]:
    """``{run_id: reason}`` of the too-short runs among plan entries (with ``config``)."""
    out = {}
    for e in entries:
        why = short_reason(e.get("config", {}), int(e.get("iterations", 0)))
        if why:
            out[str(e["run_id"])] = why
    return out


def warning_lines(short: dict[str, str], n_runs: int, indent: str = "") -> list[str]:
    """The loud warning printed under the plan (empty when no run is too short)."""
    if not short:
        return []
    lines = [f"{indent}WARNING: {len(short)} of {n_runs} runs are TOO SHORT to mean anything; "
             "their metrics are a pipeline check, not results (give more iterations or "
             "--budget-minutes):"]
    shown = list(short.items())[:6]
    lines += [f"{indent}  {rid}: {why}" for rid, why in shown]
    if len(short) > len(shown):
        lines.append(f"{indent}  ... and {len(short) - len(shown)} more")
    return lines
