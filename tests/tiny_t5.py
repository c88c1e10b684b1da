"""A tiny T5 that has really learned a few answers, saved like the train stage saves models/qa-t5.

Built in seconds on CPU: the project's own tokenizer learner (stages.tokenizer) on the texts,
a 2-layer T5, and plain AdamW steps until greedy decoding reproduces every answer. Tests of
`soqa ask` and of the evaluate stage then check real behaviour (the learned answers come back),
not just that something was printed.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

from stages.model.prompt import format_source

# Question -> answer, in the markdown-ish form of the curated data (fenced code, `inline` code).
PAIRS: dict[str, str] = {
    "How to install Numpy?": "Use pip:\n\n```\npip install numpy\n```",
    "How to add 2 lists together?": "Concatenate them with `+`:\n\n```\nc = a + b\n```",
    "What is the difference between list and tuple?": "A tuple is immutable, a list is not.",
}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run tiny-model work on one CPU thread (as the evaluate stage does for small models), then restore.

    The matrices are too small to split; with two OpenMP threads on a busy 2-core machine the
    same work ran several times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_tiny_t5(dest: Path, pairs: dict[str, str] | None = None, steps: int = 300, seed: int = 0,
                  extra_texts: Sequence[str] = ()) -> Path:
    """Train a tiny T5 to answer `pairs` (sources: titles, as `soqa ask` formats them) and save it."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from stages.model.tokenizer import learn_tokenizer, to_transformers

    pairs = dict(PAIRS if pairs is None else pairs)
    sources = [format_source(q, None, include_body=False) for q in pairs]
    targets = list(pairs.values())
    tok = to_transformers(learn_tokenizer([*sources, *targets, *extra_texts] * 20, vocab_size=600), 512)
    config = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_heads=2, num_layers=2,
                      num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():   # as stages.modeling does: unscaled output embeddings make the first logits huge
        model.lm_head.weight.normal_(0.0, config.d_model ** -0.5)
    enc = tok(sources, padding=True, return_tensors="pt")
    labels = tok(text_target=targets, padding=True, return_tensors="pt")["input_ids"]
    labels[labels == tok.pad_token_id] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with one_torch_thread():
        for _ in range(steps):   # ~170 steps, a few seconds
            loss = model(**enc, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if loss.item() < 0.005:
                break
        model.eval()
        learned = tok.batch_decode(model.generate(**enc, max_new_tokens=64), skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    if learned != targets:
        raise AssertionError(f"the tiny T5 did not learn its answers (loss {loss.item():.4f}): {learned}")
    gc = model.generation_config
    gc.max_new_tokens, gc.num_beams, gc.no_repeat_ngram_size, gc.repetition_penalty = 64, 1, 0, 1.0
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest
