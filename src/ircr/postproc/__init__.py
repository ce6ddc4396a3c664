"""Post-processing: WBIS (NP probability + HV maps -> instance map), single and batched."""

from ircr.postproc.batch import wbis_batch
from ircr.postproc.watershed import WBISParams, wbis, wbis_reference

__all__ = ["WBISParams", "wbis", "wbis_batch", "wbis_reference"]
