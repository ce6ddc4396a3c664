"""User-facing errors.

Every problem a user can cause (bad file, bad config, bad option) is raised as
:class:`IrcrError` whose message is one line naming the file (or key) and the problem.
The CLI prints ``ircr: error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class IrcrError(Exception):
    """A user-facing error with a one-line message that names the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def file_error(path: str | Path, problem: str) -> IrcrError:
    """Build an :class:`IrcrError` of the form ``<path>: <problem>``."""
    return IrcrError(f"{path}: {problem}")
