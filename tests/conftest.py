"""Shared fixtures.

``shared_data`` points at ``../shared/data`` (or ``$IRCR_SHARED_DATA``). Locally a missing
copy skips the test; under CI (``CI=true``) it fails, so real-data tests can never be skipped
silently there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    env = os.environ.get("IRCR_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets (MoNuSeg2018/, CPM15/)."""
    root = _shared_root()
    if not (root / "MoNuSeg2018").is_dir():
        msg = f"real data not found at {root}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: real-data tests must run)")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def monuseg_root(shared_data: Path) -> Path:
    """MoNuSeg 2018 training folder (images/, labels_inst/, annotations_xml_partial/)."""
    return shared_data / "MoNuSeg2018" / "train"


def run_data_prepare(*argv: str) -> None:
    """Run ``ircr data prepare ARGV...`` through its CLI handler (asserts exit status 0)."""
    import argparse

    from ircr.cli import data as data_cli

    parser = argparse.ArgumentParser(prog="ircr")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "prepare", *argv])
    assert args.func(args) == 0


@pytest.fixture(scope="session")
def cpm15_root(shared_data: Path) -> Path:
    """CPM-15 training folder (images/, labels_txt/)."""
    return shared_data / "CPM15" / "train"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per skip reason, so "N skipped" is never a mystery (README, "Tests")."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for rep in skipped:
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        if "real data not found" in reason:
            reason = ("real data not found: put MoNuSeg2018/ and CPM15/ in ../shared/data or "
                      "set IRCR_SHARED_DATA (CI=true makes these fail instead)")
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.write_line("skipped tests, by reason:")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  {n:4d}  {reason}")
