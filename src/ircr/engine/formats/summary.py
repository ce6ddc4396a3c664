"""``summary``: the run's summary JSON (written last: it marks the input done)."""

from __future__ import annotations

from ircr.engine.outputs import OutputFormat, register_output
from ircr.io.writers import write_summary_json

register_output(OutputFormat("summary", "_summary.json", "summary JSON", 100,
                             write_summary=write_summary_json))
