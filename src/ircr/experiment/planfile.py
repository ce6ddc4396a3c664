"""``plan.json`` of an experiment folder: its shape, what changed since, and ``--replan``.

``plan.json`` holds the planned runs (:class:`~ircr.experiment.plan.PlannedRun` fields) and,
since issue 28, ``specs`` (each run's config *before* the budget: protocol + base config +
overrides) and ``settings`` (the protocol keys that shape the plan). A rerun into the same
``--out`` compares them with the protocol as it is now: any difference (a run added or
removed, a config key, the budget) is refused with the differences, unless ``--replan``: then
the new plan replaces the old one, run folders whose config changed (or that left the plan)
move to ``replaced/<UTC time>/runs/`` with the old ``plan.json`` (nothing is deleted), and
runs whose config is unchanged keep what they finished.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ircr.errors import IrcrError
from ircr.experiment.protocol import Protocol, RunSpec
from ircr.experiment.status import read_json

# fields of a plan entry and the JSON types they must have
ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "method": str, "ratio": str, "split_seed": int, "train_seed": int,
    "epochs": int, "iterations_per_epoch": int, "iterations": int, "lr_steps": list,
    "expected_s": (int, float, type(None)), "config": dict}
SETTINGS = ("budget", "iterations", "budget_epochs", "evaluate", "test_dataset", "test_split",
            "val_fraction")


def _shape_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    runs = doc.get("runs")
    if not isinstance(runs, list):
        return "key 'runs' missing or not a list"
    for i, e in enumerate(runs):
        if not isinstance(e, dict):
            return f"runs[{i}] is not an object"
        for key, typ in ENTRY_TYPES.items():
            if key not in e:
                return f"runs[{i}]: missing key '{key}'"
            if not isinstance(e[key], typ) or (typ is int and isinstance(e[key], bool)):
                return f"runs[{i}].{key}: wrong type {type(e[key]).__name__}"
    for key in ("specs", "settings"):
        if key in doc and not isinstance(doc[key], dict):
            return f"key '{key}' is not an object"
    return None


def read_plan(path: Path, fix: str = "rerun with --replan or use another --out") -> dict[str, Any]:
    """``plan.json`` checked for shape (one-line IrcrError naming it and the first problem)."""
    doc = read_json(path)
    problem = _shape_problem(doc)
    if problem:
        raise IrcrError(f"{path}: not a plan of this ircr version ({problem}); {fix}")
    result: dict[str, Any] = doc
    return result


# keys added later: stored only when not at their default, so older plans stay unchanged
LATER_SETTINGS = {"test_fraction": 0.0, "test_unit": "image"}


def settings_of(proto: Protocol) -> dict[str, Any]:
    """The protocol keys that shape a plan, JSON-ready."""
    later = {k: getattr(proto, k) for k, d in LATER_SETTINGS.items() if getattr(proto, k) != d}
    return _json({**{k: getattr(proto, k) for k in SETTINGS}, **later})


def specs_of(runs: list[RunSpec]) -> dict[str, Any]:
    """``{run_id: config before budgets}``, JSON-ready."""
    return _json({r.run_id: r.config for r in runs})


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _dict_changes(old: dict[str, Any], new: dict[str, Any], where: str) -> list[str]:
    a, b = _flat(old), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{where}{k}: {_short(a.get(k, '<unset>'))} -> "
                       f"{_short(b.get(k, '<unset>'))}")
    return out


def plan_changes(doc: dict[str, Any], proto: Protocol, runs: list[RunSpec],
                 budget_minutes: float | None) -> list[str]:
    """What differs between a stored plan and the protocol/budget of this command."""
    changes = []
    if doc.get("budget_minutes") != budget_minutes:
        changes.append(f"--budget-minutes {doc.get('budget_minutes')} -> {budget_minutes}")
    old_ids = [str(e["run_id"]) for e in doc["runs"]]
    new_ids = [r.run_id for r in runs]
    added = [i for i in new_ids if i not in old_ids]
    removed = [i for i in old_ids if i not in new_ids]
    if added:
        changes.append(f"runs added: {', '.join(added[:3])}"
                       + (f" (+{len(added) - 3})" if len(added) > 3 else ""))
    if removed:
        changes.append(f"runs removed: {', '.join(removed[:3])}"
                       + (f" (+{len(removed) - 3})" if len(removed) > 3 else ""))
    if "settings" in doc:
        changes += _dict_changes(doc["settings"], settings_of(proto), "protocol key ")
    old_specs, new_specs = doc.get("specs"), specs_of(runs)
    if isinstance(old_specs, dict):
        for rid in new_ids:
            if rid in old_specs:
                changes += _dict_changes(old_specs[rid], new_specs[rid], f"{rid}: ")
    return changes


def changed_message(path: Path, changes: list[str]) -> str:
    """One line: the first differences and the two ways out."""
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4
                                      else "")
    return (f"{path}: the experiment changed since it was planned ({shown}); rerun with "
            "--replan to plan it again (run folders whose config changed are moved to "
            "replaced/ and run again) or use another --out")


def _json(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def set_aside(out: Path, entries: list[dict[str, Any]]) -> Path | None:
    """``--replan``: move the old plan, protocol copy and the run folders not reused.

    A run folder is reused when its ``run.json`` holds exactly the new entry's config.
    Returns the ``replaced/<time>`` folder, or None when nothing was moved.
    """
    configs = {e["run_id"]: _json(e["config"]) for e in entries}
    dest = out / "replaced" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = False
    runs_dir = out / "runs"
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        run_json = run_dir / "run.json"
        try:
            keep = run_json.is_file() and _json(read_json(run_json).get("config")) == \
                configs.get(run_dir.name)
        except IrcrError:
            keep = False
        if not keep:
            (dest / "runs").mkdir(parents=True, exist_ok=True)
            shutil.move(str(run_dir), str(dest / "runs" / run_dir.name))
            moved = True
    for name in ("plan.json", "protocol.yaml"):  # the new protocol is copied in afterwards
        if (out / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out / name), str(dest / name))
            moved = True
    return dest if moved else None
