"""The one error a stage reports to its user."""
from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot go on: the message is printed as one clear line and the stage exits 1."""
