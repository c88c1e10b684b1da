"""ROUGE-1/2/L/Lsum with rouge-score, as a local `evaluate` module that works offline.

`evaluate.load("rouge")` fetches its script from the hub; this module is loaded by path
instead (`evaluate.load("stages/model/rouge")`). Two deliberate differences from the hub's:

- ROUGE-Lsum needs one sentence a line. The hub module leaves that to the caller (usually
  nltk's punkt, a download); here texts are split on newlines and on sentence-ending
  punctuation followed by whitespace, with no download.
- The aggregate is the plain mean of the per-example F1 scores. The hub module reports the
  median of a bootstrap resampling, which draws random numbers: the same predictions could
  score differently run to run, and DVC metric diffs would show noise.
"""
from __future__ import annotations

import re

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """ROUGE F1 (rouge1, rouge2, rougeL, rougeLsum) computed with Google's rouge-score
package. rougeLsum sees one sentence a line (split on newlines and on . ! ? followed by space).
With use_aggregator=True each score is the mean F1 over the examples; with False, a list of
per-example F1 scores."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or a list of lists of references per prediction
        (the best-scoring reference counts, as in rouge-score's score_multi).
    rouge_types: which scores to compute (default rouge1, rouge2, rougeL, rougeLsum).
    use_aggregator: mean over examples (True, default) or per-example lists (False).
    use_stemmer: Porter-stem words before matching (default False, as in the hub module).
    tokenizer: optional object with a `tokenize(text) -> list[str]` method replacing
        rouge-score's default (lowercase, non-alphanumerics become spaces).
Returns:
    dict of rouge type -> mean F1 (float) or list of per-example F1.
Example:
    >>> rouge = evaluate.load("stages/model/rouge")
    >>> rouge.compute(predictions=["use pip install numpy"], references=["pip install numpy"])["rouge1"]
    0.857...
"""

_CITATION = """Chin-Yew Lin. 2004. ROUGE: A Package for Automatic Evaluation of Summaries.
In Text Summarization Branches Out, pages 74-81, Barcelona, Spain. ACL."""

DEFAULT_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? (possibly followed by closing quotes/brackets) before whitespace
# or the end of the line. Code such as `os.path.join` has no whitespace after its dots and
# stays whole. Only whitespace is lost between sentences, so word tokens are unchanged.
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s|$)|$)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text for ROUGE-Lsum: every line, cut further after . ! ? and a space."""
    return [s for line in text.splitlines() for s in _SENTENCE.findall(line)]


def lsum_text(text: str) -> str:
    """The text with one sentence a line, the form rouge-score's rougeLsum expects."""
    return "\n".join(split_sentences(text))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://aclanthology.org/W04-1013/"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                 tokenizer=None):
        rouge_types = list(rouge_types or DEFAULT_TYPES)
        unknown = sorted(set(rouge_types) - set(DEFAULT_TYPES) - {f"rouge{n}" for n in range(3, 10)})
        if unknown:
            raise ValueError(f"unknown rouge types {unknown}; use some of {list(DEFAULT_TYPES)}")
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer,
                                          split_summaries=False, tokenizer=tokenizer)
        lsum = "rougeLsum" in rouge_types
        per_type: dict[str, list[float]] = {t: [] for t in rouge_types}
        for pred, ref in zip(predictions, references):
            refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
            if lsum:
                # Only Lsum reads the newlines; the other types see the same word tokens either way.
                pred, refs = lsum_text(pred), [lsum_text(r) for r in refs]
            scores = scorer.score_multi(refs, pred) if len(refs) > 1 else scorer.score(refs[0], pred)
            for t in rouge_types:
                per_type[t].append(float(scores[t].fmeasure))
        if not use_aggregator:
            return per_type
        return {t: (sum(v) / len(v) if v else 0.0) for t, v in per_type.items()}
