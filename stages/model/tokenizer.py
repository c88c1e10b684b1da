"""Stage `tokenizer`: a Unigram tokenizer learned from the train split, for models built from scratch.

T5's stock tokenizer pipeline collapses whitespace and drops newlines, so Python code comes back
from the model as one long line. This one keeps text exactly:

- normalizer: NFC only (no lower-casing, no whitespace collapsing), then every space becomes
  "▁" so that spaces are part of the pieces;
- pre-tokenizer: a newline together with the indentation that follows it is one pre-token
  ("\\n▁▁▁▁" becomes a learnable piece), a word carries the spaces before it, and runs of
  spaces before a newline or the end stay on their own;
- byte fallback: a character never seen in training is encoded as its UTF-8 bytes (<0xNN>
  pieces) instead of <unk>, so any text round-trips;
- decoder: bytes fused back, "▁" back to spaces, nothing stripped.

T5 conventions: <pad>=0, </s>=1, <unk>=2; every sequence ends with </s>. Saved as a
transformers tokenizer folder that `AutoTokenizer.from_pretrained(path)` loads.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Iterable, Iterator

from stages.core.console import exit_on_stage_error
from stages.core.errors import StageError
from stages.core.outputs import DATA, atomic_path, clean_stale_tmp
from stages.core.params import load_params
from stages.core.parquet import iter_parquet
from stages.model.prompt import format_source

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, EOS, UNK]          # ids 0, 1, 2 as in T5
SPACE = "▁"                               # U+2581, SentencePiece's visible space
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
SCORE_DECIMALS = 6
FILL_IN_WINDOW = 0.05                      # covers 500 required characters appended 0.0001 apart
BYTE_SCORE = -1000.0                       # far below any learned piece: bytes only for unseen characters
# A newline with the indentation after it | a word with the spaces before it | leftover spaces.
PRE_TOKEN_PATTERN = r"\n[▁\t]*|▁*[^▁\n]+|▁+"
TOKENIZER_DIR = DATA / "tokenizer"


def training_texts(batches: Iterable[Any], include_body: bool = True) -> Iterator[str]:
    """The text the model reads and writes: each pair's formatted source and its answer."""
    for batch in batches:
        cols = batch.to_pydict()
        for title, question, answer in zip(cols["title"], cols["question"], cols["answer"]):
            yield format_source(title, question, include_body)
            if answer:
                yield answer


def _pipeline(tok: Any) -> None:
    """Attach the whitespace-preserving normalizer, pre-tokenizer, decoder and </s> post-processor."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRE_TOKEN_PATTERN), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace(SPACE, " ")])
    eos_id = SPECIAL_TOKENS.index(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)])


def learn_tokenizer(texts: Iterable[str], vocab_size: int, max_piece_length: int = 16) -> Any:
    """Pure (given the texts): learn a Unigram `tokenizers.Tokenizer` with byte fallback.

    `vocab_size` counts the special and byte tokens; on a small corpus the learned vocabulary
    can be smaller than asked (Unigram stops when no more pieces are worth keeping).
    """
    from tokenizers import Tokenizer, models, trainers

    learned_size = vocab_size - len(BYTE_TOKENS)
    if learned_size < 200:
        raise StageError(f"tokenizer: vocab_size {vocab_size} leaves {learned_size} learned pieces after the "
                         f"{len(BYTE_TOKENS)} byte tokens; use at least {len(BYTE_TOKENS) + 200}")
    tok = Tokenizer(models.Unigram())
    _pipeline(tok)
    # Printable ASCII always gets a piece of its own, however rare in the sample (code needs { } ~ ^ ...).
    alphabet = [c for c in string.printable if c not in "\x0b\x0c\r "] + [SPACE]
    trainer = trainers.UnigramTrainer(vocab_size=learned_size, special_tokens=SPECIAL_TOKENS, unk_token=UNK,
                                      initial_alphabet=alphabet, max_piece_length=max_piece_length,
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Append byte pieces and rebuild the model with byte fallback (the trainer cannot add them itself).
    # Scores are rounded and pieces put in a canonical order: the trainer's float sums come out in
    # a different order each run (last digits differ), and the saved tokenizer must be identical
    # for identical input (DVC hashes it; CPU training is deterministic end to end).
    # The trainer also appends characters it must keep (alphabet, rare characters) just below the
    # lowest learned score, 0.0001 apart in hash-set order: those get one common score.
    learned = [(p, round(s, SCORE_DECIMALS)) for p, s in json.loads(tok.to_str())["model"]["vocab"]
               if p not in SPECIAL_TOKENS]
    floor = min((s for _, s in learned), default=0.0)
    fill_in = round(floor + FILL_IN_WINDOW, SCORE_DECIMALS)
    special = [(piece, 0.0) for piece in SPECIAL_TOKENS]
    rest = sorted({(p, fill_in if len(p) == 1 and s < fill_in else s) for p, s in learned},
                  key=lambda ps: (-ps[1], ps[0]))
    have = {p for p, _ in rest}
    vocab = special + rest + [(b, BYTE_SCORE) for b in BYTE_TOKENS if b not in have]
    tok.model = models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK), byte_fallback=True)
    for i, special in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(special) != i:
            raise StageError(f"tokenizer: {special} got id {tok.token_to_id(special)}, expected {i}")
    return tok


def to_transformers(tok: Any, model_max_length: int) -> Any:
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer with T5's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        model_max_length=model_max_length, padding_side="right",
        # The default clean-up deletes spaces before punctuation ("x ." -> "x."): code must come back as is.
        clean_up_tokenization_spaces=False)


def main() -> None:
    def body() -> None:
        params = load_params()
        p = params.get("tokenizer", {})
        vocab_size = int(p.get("vocab_size", 8000))
        include_body = bool(params.get("model", {}).get("include_body", True))
        max_source = int(params.get("model", {}).get("max_source_length", 512))
        train_split = DATA / "split" / "train.parquet"
        if not train_split.exists():
            raise StageError(f"tokenizer: {train_split} is missing; run the split stage first (dvc repro split)")
        clean_stale_tmp(DATA)
        batches = iter_parquet(train_split, 5000, columns=["title", "question", "answer"])
        tok = learn_tokenizer(training_texts(batches, include_body), vocab_size,
                              int(p.get("max_piece_length", 16)))
        hf_tok = to_transformers(tok, max_source)
        with atomic_path(TOKENIZER_DIR) as tmp:
            hf_tok.save_pretrained(str(tmp))
        print(f"tokenizer: {tok.get_vocab_size()} pieces (asked {vocab_size}) -> {TOKENIZER_DIR}")

    exit_on_stage_error(body)


if __name__ == "__main__":
    main()
