"""Issue 27 point 15: torchvision is imported only where Mask R-CNN (BASS) needs it.

A torch/torchvision pair that does not match (pip falling back to a ``+cu130`` torchvision next
to a ``+cpu`` torch) breaks ``import torchvision`` itself. HoVer-Net work (method registry,
model families, the packaged model, the CLI parser) must not import it; building a Mask R-CNN
must say so in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Every import of torchvision fails as on a mismatched install.
_BROKEN = textwrap.dedent("""
    import sys, importlib.abc
    class _Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                raise RuntimeError("operator torchvision::nms does not exist")
            return None
    sys.meta_path.insert(0, _Broken())
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", _BROKEN + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_hovernet_paths_work_without_torchvision_and_bass_says_why() -> None:
    res = _run("""
        import numpy as np
        import ircr
        from ircr.cli.main import build_parser
        from ircr.errors import IrcrError
        from ircr.inference.family import get_family
        from ircr.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
        from ircr.train.registry import known_methods
        build_parser()
        assert "bass" in known_methods(), known_methods()
        assert get_family("maskrcnn").name == "maskrcnn"
        seg = ircr.load_model("default", device="cpu")
        seg.segment(np.full((48, 48, 3), 200, np.uint8), mpp=0.25)
        assert "torchvision" not in sys.modules
        try:
            build_maskrcnn(MaskRCNNConfig(backbone="tiny"))
        except IrcrError as exc:
            print(exc)
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    msg = lines[0]
    assert msg.startswith("Mask R-CNN (BASS) models need torchvision: torchvision ")
    assert "does not work with torch " in msg and "torchvision::nms" in msg
    assert "pip install" in msg


def test_build_checks_the_pair_before_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    import ircr.models.maskrcnn as mr
    from ircr.errors import IrcrError

    monkeypatch.setattr(mr, "torchvision_problem", lambda: "torchvision 9 vs torch 1")
    with pytest.raises(IrcrError, match="need torchvision: torchvision 9 vs torch 1"):
        mr.build_maskrcnn(mr.MaskRCNNConfig(backbone="tiny"))
    with pytest.raises(IrcrError, match="need torchvision"):
        _ = mr.BassMaskRCNN
