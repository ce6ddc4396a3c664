"""``compat.keep_freed_memory``: a freed large buffer is reused, not faulted in again.

CPU inference frees and allocates window-sized tensors (hundreds of MB) at every window.
With glibc's defaults each such block is mmapped and unmapped, so every new one is faulted in
page by page (minor faults; system time as large as the network's own). With
``keep_freed_memory()`` the second allocation of the same size reuses the heap's pages. Run
in a fresh interpreter each (malloc settings are process-wide), on the main thread, with
glibc's own malloc (numpy would ask the kernel for huge pages, which hides the effect).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, resource, sys
from ircr.compat import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
applied = keep_freed_memory(sys.argv[1] == "keep")
faults = []
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(200_000_000)  # a window-sized block, every page written
    libc.memset(p, 1, 200_000_000)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    libc.free(p)
print(json.dumps({"applied": applied, "faults": faults}))
"""

def _faults(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_window_buffers_are_reused_not_faulted_again() -> None:
    pages = 200_000_000 // 4096  # 48,828 pages of 4 KiB in one 200 MB buffer
    default, keep = _faults("default"), _faults("keep")
    assert keep["applied"] is True
    d, k = default["faults"], keep["faults"]
    assert isinstance(d, list) and isinstance(k, list)
    # glibc's defaults: every 200 MB buffer is a fresh mapping, faulted in again each time
    assert min(d) > 0.8 * pages
    # kept: the first one is faulted in, the next two reuse its pages
    assert k[0] > 0.8 * pages and max(k[1:]) < 0.05 * pages
