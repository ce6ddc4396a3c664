"""``compat.allow_huge_page_tensors``: loading a model for inference asks PyTorch for
huge-page tensors; importing ircr (and so training) does not.

PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation; with it, every CPU
block of 2 MB or more is ``madvise(MADV_HUGEPAGE)``-d, which ``/proc/self/smaps`` shows as
``THPeligible: 1`` on the tensor's mapping (where the kernel's THP mode is not ``never``).
Each case runs in a fresh interpreter (the setting is per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux smaps")


def _thp_mode() -> str:
    """The kernel's THP mode: "always", "madvise" or "never" ("never" if unknown)."""
    text = THP_MODE.read_text() if THP_MODE.exists() else "[never]"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else "never"


def _expected(asked: bool) -> str:
    """What the probe must say: with "always" every large block gets huge pages anyway,
    with "madvise" only if PyTorch asked for them, with "never" none does."""
    return str(_thp_mode() == "always" or (_thp_mode() == "madvise" and asked))


def _run(code: str, env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    return out.split()


AFTER_LOAD = """
import os, ircr, torch
seg = ircr.load_model()
from ircr.compat import huge_page_tensors
print(os.environ["THP_MEM_ALLOC_ENABLE"], huge_page_tensors())
"""
IMPORT_ONLY = """
import os, ircr.engine.segmenter, ircr.train.trainer
from ircr.compat import huge_page_tensors
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), huge_page_tensors())
"""
TENSOR_FIRST = """
import torch
torch.zeros(8)  # PyTorch reads the variable here, before ircr could set it
import ircr
ircr.load_model()
from ircr.compat import huge_page_tensors
print(huge_page_tensors())
"""


def test_load_model_enables_huge_page_tensors() -> None:
    env_value, probed = _run(AFTER_LOAD, None)
    assert env_value == "1"
    assert probed == _expected(True)


def test_import_alone_does_not() -> None:
    """Training imports ircr but never loads a model folder: 4 KB pages (its CPU step ran
    0.8x as fast with huge pages)."""
    assert _run(IMPORT_ONLY, None) == ["unset", _expected(False)]


def test_the_segment_command_gets_them(tmp_path: Path) -> None:
    """``ircr segment``'s process: the CLI makes no tensor before the model is loaded."""
    import numpy as np
    from PIL import Image

    img = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(img)
    code = f"""
from ircr.cli.main import main
from ircr.compat import huge_page_tensors
try:
    main(["segment", {str(img)!r}, "-o", {str(tmp_path / "out")!r}, "--mpp", "0.25",
          "--outputs", "summary", "--force"])
except SystemExit:
    pass
print(huge_page_tensors())
"""
    assert _run(code, None)[-1] == _expected(True)


def test_a_users_choice_is_kept() -> None:
    assert _run(AFTER_LOAD, "0") == ["0", _expected(False)]


def test_too_late_when_a_tensor_came_first() -> None:
    """The documented limit: a program that made a tensor before importing ircr keeps 4 KB
    pages (the probe says so rather than assuming)."""
    assert _run(TENSOR_FIRST, None) == [_expected(False)]


def test_huge_pages_make_fewer_faults() -> None:
    """A 200 MB tensor filled twice: with the setting, two orders of magnitude fewer page
    faults than without (4 KB vs 2 MB pages); the count is the kernel's, not ours."""
    if _thp_mode() != "madvise":
        pytest.skip(f"the kernel's THP mode is {_thp_mode()!r}: the setting changes nothing")
    code = """
import resource, ircr, torch
from ircr.compat import allow_huge_page_tensors
allow_huge_page_tensors()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    t = torch.empty(200_000_000, dtype=torch.uint8); t.fill_(1); del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""
    with_thp = int(_run(code, None)[0])
    without = int(_run(code, "0")[0])
    assert without >= 2 * 200_000_000 // 4096 * 0.9  # every 4 KB page faulted in, twice
    assert with_thp * 10 < without
