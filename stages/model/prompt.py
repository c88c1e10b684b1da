"""How a question becomes model input: one definition for train, evaluate and `soqa ask`."""
from __future__ import annotations

PREFIX = "Answer this Python question: "


def format_source(title: str, question: str | None = None, include_body: bool = True) -> str:
    """Model input for a question: the instruction, the title and (optionally) the question text."""
    title = " ".join((title or "").split())
    if include_body and question and question.strip():
        return f"{PREFIX}{title}\n\n{question.strip()}"
    return f"{PREFIX}{title}"
