"""Human-eval questions leaking into train: which questions match one, on short texts.

Word n-gram rules (5- or 13-grams) miss short questions: "How to install Numpy?" has no 5-gram.
A question matches an eval question when its title, or the first sentence of its body (a merged
duplicate's page shows the original's title there), (1) holds a majority of the eval question's
distinct content words (a plural 's' dropped; question words and 'python' are not content) and
(2) reaches a character 3-gram Jaccard of dedup.eval_threshold over those content words.

The default, 0.5, was set on the six seed questions against the real pymaker pages (the 150k
corpus; tests/curate/test_dedup.py): it catches the original "How do I remove an element from a
list by index in Python?" (0.57 against "How to find the index of an element in a list in
Python?", 0.51 against "How to remove a specific element from a list in Python?"), "How to install
numpy for python 3 6?" (0.76) and "Whats the difference between list and list?" (a code-stripped
"list and tuple", 0.77): 55 of the 44,749 questions. Recall over precision: a question taken out of
train costs little, one left in inflates the human evaluation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.errors import StageError

_NON_WORD = re.compile(r"[\W_]+")
STOP = frozenset(("how", "do", "does", "did", "i", "to", "a", "an", "the", "in", "python", "python3", "what",
                  "whats", "is", "are", "can", "my", "you", "way", "best", "of", "for", "with", "on", "by",
                  "from", "and", "or", "it", "this", "that", "into", "at", "as", "be", "using", "use",
                  "should", "which", "why", "when", "there", "py"))


def content_words(text: str) -> list[str]:
    """Case folded words, question words dropped, a plural 's' stripped (lists -> list)."""
    out = []
    for w in _NON_WORD.sub(" ", text.casefold()).split():
        if w in STOP:
            continue
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def trigrams(words: list[str]) -> set[str]:
    t = f" {' '.join(words)} "
    return {t[i:i + 3] for i in range(len(t) - 2)}


def similarity(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


@dataclass(frozen=True)
class EvalQuestion:
    text: str
    words: tuple[str, ...]        # distinct content words
    grams: frozenset[str]


def load_eval_questions(path: Path) -> list[EvalQuestion]:
    """The human-eval file: one question a line, blank lines and # comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StageError(f"dedup: cannot read the human-eval questions {path}: {exc}") from None
    out = []
    for line in lines:
        q = line.strip()
        if q and not q.startswith("#"):
            words = content_words(q)
            out.append(EvalQuestion(q, tuple(dict.fromkeys(words)), frozenset(trigrams(words))))
    return out


def first_sentences(bodies: pa.Array) -> pa.Array:
    """Each body's first sentence: up to the first line end or ?.! (at most 200 characters)."""
    head = pc.utf8_slice_codeunits(pc.fill_null(bodies, ""), 0, 200)
    return pc.extract_regex(head, r"^\s*(?P<s>[^\n?.!]*[?.!]?)").field("s")


def best_matches(titles: pa.Array, bodies: pa.Array, evals: list[EvalQuestion],
                 threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (index of the best-matching eval question or -1, its similarity or NaN).
    Rows are screened with Arrow first (content words present), so Python scores only a few."""
    n = len(titles)
    best = np.full(n, -1, np.int32)
    score = np.full(n, np.nan)
    if not evals or n == 0:
        return best, score
    titles = pc.fill_null(titles, "")
    sentences = first_sentences(bodies)
    texts = [pc.utf8_lower(titles), pc.utf8_lower(sentences)]
    for e, q in enumerate(evals):
        if not q.words:
            continue
        need = len(q.words) // 2 + 1
        rows = np.zeros(n, bool)
        for low in texts:
            held = np.zeros(n, np.int32)
            for w in q.words:
                held += pc.match_substring(low, w).to_numpy(zero_copy_only=False).astype(np.int32)
            rows |= held >= need
        for i in np.flatnonzero(rows).tolist():
            for text in (titles[i].as_py(), sentences[i].as_py()):
                words = content_words(text)
                if len(set(words) & set(q.words)) < need:
                    continue
                s = similarity(trigrams(words), set(q.grams))
                if s >= threshold and not s <= score[i]:
                    best[i], score[i] = e, s
    return best, score
