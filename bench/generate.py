"""Generation throughput of the evaluate stage's code path: generated tokens/s.

Runs stages.model.evaluate.generate_ids (length-sorted batches, one `generate` call per batch, bf16 on
CUDA, float32 on CPU) on either
- a trained model folder (default models/qa-t5) with real test questions, cycled to --questions; or
- a randomly initialised preset shape (--preset tiny | t5-small | t5-base, FLAN-T5 shapes) with
  random input ids whose lengths follow the test split's (or 32..max_source when there is none).
Random weights rarely emit EOS; --full-length (the default for presets) forces exactly
--max-new-tokens per answer (min_new_tokens), the worst case the target is stated for.

    python bench/generate.py                                  # models/qa-t5, settings from params.yaml
    python bench/generate.py --preset t5-base --questions 2000 --batch-size 256     # the GPU target
    python bench/generate.py --preset t5-small --questions 32 --max-new-tokens 64  # a CPU figure

Target (issue 5): on one H100, 2,000 test questions at 256 new tokens in <= 60 s
(= 8,533 generated tokens/s). Prints the projected time of that workload at the measured rate.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as in stages/model/evaluate.py, before torch is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_QUESTIONS, TARGET_TOKENS, TARGET_SECONDS = 2000, 256, 60.0


def _params_generate() -> dict:
    from stages.core.params import load_params

    return dict((load_params().get("generate") or {})) if Path("params.yaml").is_file() else {}


def _inputs_from_model(tokenizer, n: int, max_source: int, include_body: bool) -> list[list[int]]:
    import pandas as pd

    from stages.model.prompt import format_source

    test = Path("data/split/test.parquet")
    if not test.is_file():
        sys.exit(f"{test} not found: run `dvc repro split` first, or use --preset")
    df = pd.read_parquet(test, columns=["title", "question"])
    sources = [format_source(t, q, include_body) for t, q in zip(df["title"], df["question"])]
    sources = [sources[i % len(sources)] for i in range(n)]
    return tokenizer(sources, truncation=True, max_length=max_source)["input_ids"]


def _random_inputs(n: int, vocab: int, max_source: int, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    test = Path("data/split/test.parquet")
    lengths = None
    if test.is_file():   # the test split's title+question lengths in characters / 4 ~ tokens
        import pandas as pd

        df = pd.read_parquet(test, columns=["title", "question"])
        chars = (df["title"].str.len() + df["question"].str.len()).to_numpy()
        lengths = np.clip(chars // 4, 8, max_source)[rng.integers(0, len(chars), n)] if len(chars) else None
    if lengths is None:
        lengths = rng.integers(32, max_source + 1, n)
    # ids from 3 up: no <pad>/<eos>/<unk> inside a question; the last one is EOS as the tokenizer adds it.
    return [[*rng.integers(3, vocab, int(k) - 1).tolist(), 1] for k in lengths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/qa-t5"), help="trained model folder")
    ap.add_argument("--preset", choices=["tiny", "t5-small", "t5-base"], help="random weights of this shape instead")
    ap.add_argument("--vocab-size", type=int, default=32128, help="vocabulary of a --preset model (FLAN-T5: 32128)")
    ap.add_argument("--questions", type=int, help="inputs (default: 2000 on CUDA, 32 on CPU)")
    ap.add_argument("--batch-size", type=int,
                    help="inputs per generate call (default: evaluate.batch_size auto: 256 on CUDA, 32 on CPU)")
    ap.add_argument("--max-source", type=int, default=512, help="input tokens at most")
    ap.add_argument("--max-new-tokens", type=int, help="default: params.yaml generate.max_new_tokens (256)")
    ap.add_argument("--num-beams", type=int, help="default: params.yaml generate.num_beams")
    ap.add_argument("--no-repeat-ngram-size", type=int, help="default: params.yaml generate.no_repeat_ngram_size")
    ap.add_argument("--repetition-penalty", type=float, help="default: params.yaml generate.repetition_penalty")
    ap.add_argument("--full-length", action=argparse.BooleanOptionalAction, default=None,
                    help="force exactly max_new_tokens per answer (default: on for --preset, off for --model)")
    ap.add_argument("--threads", default="auto", help="CPU threads: auto (1 for models < 20M parameters) or N")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from stages.model import evaluate as ev

    device, dtype = ev.model_device()
    cuda = device.type == "cuda"
    n = args.questions or (TARGET_QUESTIONS if cuda else 32)
    batch = args.batch_size or ev.batch_size("auto")
    settings = {k: v for k, v in _params_generate().items() if k in ev.GENERATE_KEYS}
    for key in ev.GENERATE_KEYS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.setdefault("max_new_tokens", TARGET_TOKENS)

    if args.preset:
        from stages.model.modeling import t5_config
        from transformers import T5ForConditionalGeneration

        torch.manual_seed(0)
        model = T5ForConditionalGeneration(t5_config(args.preset, args.vocab_size))
        model = model.to(device=device, dtype=dtype).eval()
        inputs = _random_inputs(n, args.vocab_size, args.max_source, seed=0)
        pad_id, eos_id, what = 0, 1, f"{args.preset} (random weights, vocab {args.vocab_size})"
    else:
        model, tok = ev.load_trained(args.model)
        inputs = _inputs_from_model(tok, n, args.max_source, include_body=True)
        pad_id, eos_id, what = tok.pad_token_id, tok.eos_token_id, str(args.model)
    threads = ev.set_cpu_threads(model, None if args.threads == "auto" else int(args.threads))
    cfg = ev.generation_config(model, settings)
    full = args.full_length if args.full_length is not None else bool(args.preset)
    if full:
        cfg.min_new_tokens = cfg.max_new_tokens

    if args.warmup:
        ev.generate_ids(model, inputs[:batch], cfg, batch, pad_id, eos_id)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    gen = ev.generate_ids(model, inputs, cfg, batch, pad_id, eos_id)
    seconds = time.perf_counter() - start
    tokens = int(gen.lengths.sum())
    rate = tokens / seconds
    projected = TARGET_QUESTIONS * TARGET_TOKENS / rate
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    name = torch.cuda.get_device_name(0) if cuda else f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    result = {
        "model": what, "parameters_m": round(params_m, 1), "device": name, "dtype": str(dtype).replace("torch.", ""),
        "questions": n, "batch_size": batch, **{k: settings.get(k) for k in ev.GENERATE_KEYS},
        "full_length": full, "generated_tokens": tokens, "mean_answer_tokens": round(tokens / n, 1),
        "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1), "questions_per_s": round(n / seconds, 2),
        "projected_2000x256_s": round(projected, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print(f"model {what}: {params_m:.1f}M parameters on {name}, {result['dtype']}")
    print(f"{n} questions, batch {batch}, " + ", ".join(f"{k}={settings.get(k)}" for k in ev.GENERATE_KEYS)
          + (", every answer forced to max_new_tokens" if full else ""))
    print(f"generated {tokens:,} tokens in {seconds:.2f} s: {rate:,.0f} tokens/s, {n / seconds:.2f} questions/s")
    verdict = ("met" if projected <= TARGET_SECONDS else "NOT met") if cuda else \
        "a CPU figure: the GPU target is unmeasured here"
    print(f"2,000 questions x 256 new tokens at this rate: {projected:,.0f} s "
          f"(target on one H100: <= {TARGET_SECONDS:.0f} s; {verdict})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
