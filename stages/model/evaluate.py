"""Stage `evaluate`: the trained model on the fixed test split, against the model it started from.

The seed scored every round on a different test slice, scored its baseline at the 20-token
default length, and its answers often looped. Here, on the fixed `data/split/test.parquet`
(optionally capped at `evaluate.max_examples` pairs for CPU runs, picked by a stable hash):

- answers are generated in batches sorted by input length with the `generate:` params
  (the same settings for the trained and the initial model);
- ROUGE-1/2/L/Lsum through the local `evaluate` module stages/model/rouge, and the mean
  generated length;
- test loss, teacher-forced, label padding masked (a mean over answer tokens);
- repetition rate (share of answers in which some word 4-gram occurs 3+ times, the seed's
  looping failure), distinct-2, and the share of answers without a word (whitespace loops);
- the same for the initial model (freshly initialised with the train seed for
  `model.init: scratch`, else the pretrained checkpoint), under "initial";
- the six human-evaluation questions answered into metrics/human_eval.md, so a commit's diff
  shows how the answers changed, under a one-line caution when the model is a toy
  (stages/model/caution.py).

The `generate:` params are read here (and by `soqa ask`) only: the train stage does not depend on
them, so changing one reruns this stage, not training. Byte-fallback pieces that do not form
UTF-8 are dropped from the answers, never shown as U+FFFD.

Outputs: metrics/eval.json (DVC metrics), data/eval/predictions.parquet (predictions with
their references and per-example scores), data/eval/human_eval.json (the answers, the model's
training summary and its caution, for the report), metrics/human_eval.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.console import exit_on_stage_error
from stages.core.errors import StageError
from stages.core.outputs import DATA, METRICS, clean_stale_tmp, commit_path, tmp_sibling, write_json
from stages.core.params import load_params
from stages.model.caution import caution, read_summary
from stages.model.prompt import format_source

# OpenMP threads that spin while waiting stall every op when the CPU is shared (as stages/model/train.py
# notes); passive waiting is set before torch is first imported (lazily, below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL_DIR = Path("models") / "qa-t5"
TEST_SPLIT = DATA / "split" / "test.parquet"
QUESTIONS_FILE = DATA / "human_eval" / "questions.txt"
EVAL_DIR = DATA / "eval"
METRICS_FILE = METRICS / "eval.json"
HUMAN_EVAL_FILE = METRICS / "human_eval.md"
HUMAN_EVAL_JSON = "human_eval.json"     # in EVAL_DIR
ROUGE_MODULE = Path(__file__).resolve().parent / "rouge"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
GENERATE_KEYS = ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "repetition_penalty")
LOOP_NGRAM, LOOP_COUNT = 4, 3     # a word 4-gram seen 3+ times in one answer = a loop

PREDICTION_SCHEMA = pa.schema([
    ("question_id", pa.int64()),
    ("answer_id", pa.int64()),
    ("title", pa.string()),
    ("reference", pa.string()),
    ("prediction", pa.string()),
    ("gen_tokens", pa.int32()),        # tokens generated before EOS
    ("loss", pa.float32()),            # teacher-forced loss on the reference, mean over its tokens
    *[(t, pa.float32()) for t in ROUGE_TYPES],
    ("repetitive", pa.bool_()),
    ("initial_prediction", pa.string()),
    ("initial_gen_tokens", pa.int32()),
    ("initial_loss", pa.float32()),
    *[(f"initial_{t}", pa.float32()) for t in ROUGE_TYPES],
    ("initial_repetitive", pa.bool_()),
])


# ----------------------------------------------------------------------------- text metrics
def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Lower-cased whitespace-word n-grams of a text."""
    words = text.lower().split()
    return list(zip(*(words[i:] for i in range(n))))


def is_repetitive(text: str, n: int = LOOP_NGRAM, min_count: int = LOOP_COUNT) -> bool:
    """True when some word n-gram occurs `min_count` or more times: the answer loops.

    Words are whitespace-separated and case-folded: the same for every tokenizer, so a scratch
    and a pretrained model are measured alike. Splitting punctuation off as well would flag real
    answers that repeat a code idiom (9 of the sample's 54 answers, against 1 this way); the
    references' own rate is reported beside the models' for calibration.
    """
    counts = Counter(word_ngrams(text, n))
    return bool(counts) and max(counts.values()) >= min_count


def repetition_rate(texts: Sequence[str], n: int = LOOP_NGRAM, min_count: int = LOOP_COUNT) -> float:
    """Share of texts in which some word n-gram occurs `min_count`+ times."""
    return float(np.mean([is_repetitive(t, n, min_count) for t in texts])) if len(texts) else 0.0


def empty_rate(texts: Sequence[str]) -> float:
    """Share of texts without a single word: a model looping on newlines or spaces writes these,
    and word n-grams cannot see that loop."""
    return float(np.mean([not t.split() for t in texts])) if len(texts) else 0.0


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n over the whole set (Li et al. 2016): unique word n-grams / all word n-grams."""
    grams = [g for t in texts for g in word_ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def load_rouge() -> Any:
    """The local ROUGE metric module (offline; see stages/model/rouge/rouge.py)."""
    import evaluate

    return evaluate.load(str(ROUGE_MODULE))


# ----------------------------------------------------------------------------- batched model work
def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length (longest first), so little compute goes to padding."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(rows: Sequence[Sequence[int]], value: int) -> Any:
    import torch
    from torch.nn.utils.rnn import pad_sequence

    return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)


def generation_config(model: Any, settings: dict[str, Any]) -> Any:
    """The model's generation config with the `generate:` params on top (greedy or beam, no sampling)."""
    import copy

    cfg = copy.deepcopy(model.generation_config)
    unknown = sorted(set(settings) - set(GENERATE_KEYS))
    if unknown:
        raise StageError(f"generate: unknown keys {unknown}; known: {list(GENERATE_KEYS)}")
    cfg.max_length = None          # max_new_tokens decides, not the 20-token default the seed hit
    cfg.do_sample = False
    cfg.max_new_tokens = int(settings.get("max_new_tokens", 256))
    cfg.num_beams = int(settings.get("num_beams", 1))
    cfg.no_repeat_ngram_size = int(settings.get("no_repeat_ngram_size", 0))
    cfg.repetition_penalty = float(settings.get("repetition_penalty", 1.0))
    cfg.early_stopping = cfg.num_beams > 1
    if cfg.max_new_tokens < 1 or cfg.num_beams < 1 or cfg.repetition_penalty <= 0:
        raise StageError(f"generate: max_new_tokens and num_beams must be >= 1 and repetition_penalty > 0, "
                         f"got {settings}")
    return cfg


def decode_answers(tokenizer: Any, sequences: Sequence[Sequence[int]]) -> list[str]:
    """Token ids -> answer texts, special tokens skipped. A byte-fallback piece (<0xE2>) that does not
    complete a UTF-8 character decodes to U+FFFD; the curated texts never hold one (validate_utf
    rejects them), so every U+FFFD is such an undecodable piece, and it is dropped."""
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [t.replace("\ufffd", "") for t in texts]


def generate_settings(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml `generate:`, every key present."""
    settings = dict(params.get("generate", {}) or {})
    missing = [k for k in GENERATE_KEYS if k not in settings]
    if missing:
        raise StageError(f"params.yaml generate: missing {', '.join(missing)}")
    return settings


@dataclass
class Generated:
    """Token ids generated for each input, in input order."""
    sequences: list[list[int]]      # tokens generated before the first EOS (decoder start removed)
    seconds: float

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=len(self.sequences))


def generate_ids(model: Any, input_ids: Sequence[Sequence[int]], gen_config: Any, batch_size: int,
                 pad_id: int, eos_id: int) -> Generated:
    """Generate for every input in length-sorted batches on the model's device.

    One `model.generate` call per batch; the decoder start token, the first EOS and the batch
    padding after it are cut with tensor ops, so no Python loop runs per example inside a batch.
    Tokens the model itself generated before its EOS all count, <pad> included (an untrained
    model may emit nothing else: an empty answer that still cost max_new_tokens steps).
    """
    import torch

    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in input_ids]
    start = time.perf_counter()
    with torch.inference_mode():
        for idx in length_batches([len(x) for x in input_ids], batch_size):
            ids = _pad([input_ids[i] for i in idx], pad_id).to(device)
            seq = model.generate(input_ids=ids, attention_mask=ids.ne(pad_id), generation_config=gen_config)
            seq = seq[:, 1:]                                   # drop the decoder start token
            # Everything from the first EOS on (the EOS, then padding) is not part of the answer.
            keep = seq.eq(eos_id).long().cumsum(dim=1).eq(0)
            lengths = keep.sum(dim=1).tolist()
            flat = seq[keep].tolist()
            cuts = np.cumsum([0, *lengths])
            for j, i in enumerate(idx.tolist()):
                out[i] = flat[cuts[j]:cuts[j + 1]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Generated(out, time.perf_counter() - start)


def teacher_forced_loss(model: Any, input_ids: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]],
                        batch_size: int, pad_id: int) -> np.ndarray:
    """Per-example (summed cross-entropy, token count) on the references, label padding masked.

    Labels are padded with -100, which the loss ignores, so a batch's padding never counts;
    the caller divides the sums by the counts (per example or over the whole set).
    """
    import torch

    device = next(model.parameters()).device
    result = np.zeros((len(input_ids), 2), dtype=np.float64)
    lengths = [len(a) + len(b) for a, b in zip(input_ids, label_ids)]
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size):
            ids = _pad([input_ids[i] for i in idx], pad_id).to(device)
            labels = _pad([label_ids[i] for i in idx], -100).to(device)
            # Decoder inputs are the labels shifted right (as with labels=...), without the model's own
            # loss: it would be computed in the model's dtype (bf16 on CUDA) and summed over the batch.
            decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = model(input_ids=ids, attention_mask=ids.ne(pad_id), decoder_input_ids=decoder_ids).logits
            token_loss = torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
            result[idx, 0] = token_loss.sum(dim=1).double().cpu().numpy()
            result[idx, 1] = labels.ne(-100).sum(dim=1).cpu().numpy()
    return result


# ----------------------------------------------------------------------------- models
def model_device() -> tuple[Any, Any]:
    """(device, dtype): CUDA in bf16 when present (fp16 overflows in T5), else CPU float32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    return torch.device("cpu"), torch.float32


SMALL_MODEL_PARAMS = 20_000_000


def set_cpu_threads(model: Any, setting: Any) -> int:
    """Torch CPU threads for inference: `evaluate.cpu_threads` (an int, or auto) -> threads used.

    auto: one thread for models under 20M parameters. Their matrices are too small to gain from
    splitting, and OpenMP's thread sync then costs more than it saves: on this 2-core machine,
    busy with other work, a tiny model's beam search ran 10x faster on 1 thread than on 2
    (bench/generate.py --threads). Larger models keep torch's default.
    """
    import torch

    if next(model.parameters()).device.type != "cpu":
        return torch.get_num_threads()
    if setting in (None, "auto"):
        if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)
    elif int(setting) > 0:
        torch.set_num_threads(int(setting))
    return torch.get_num_threads()


def load_trained(model_dir: Path = MODEL_DIR) -> tuple[Any, Any]:
    """(model, tokenizer) from a trained model folder, ready for inference on the best device."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise StageError(f"no trained model at {model_dir}: run `dvc repro` (or `make repro`) to train one first")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    device, dtype = model_device()
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    return model, tokenizer


def load_initial(params: dict[str, Any], tokenizer: Any, model_dir: Path = MODEL_DIR) -> tuple[Any, str]:
    """The model training started from, on the inference device, and a description of it.

    scratch: the train stage's own initialisation (stages.model.modeling.build_scratch_model) with
    the train seed, i.e. the exact weights of its step 0, checked against the trained model's
    config; otherwise the pretrained checkpoint named by `model.init`.
    """
    from transformers import AutoConfig, GenerationConfig

    from stages.model.modeling import SCRATCH, build_scratch_model, load_pretrained

    m = params.get("model", {}) or {}
    init = str(m.get("init", SCRATCH))
    device, dtype = model_device()
    if init == SCRATCH:
        seed = int((params.get("train", {}) or {}).get("seed", 42))
        preset = str(m.get("preset", "tiny"))
        model = build_scratch_model(preset, tokenizer, seed)
        trained = AutoConfig.from_pretrained(str(model_dir)).to_dict()
        shape_keys = ("vocab_size", "d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
        differ = {k: (model.config.to_dict().get(k), trained.get(k)) for k in shape_keys
                  if model.config.to_dict().get(k) != trained.get(k)}
        if differ:
            raise StageError(f"model.preset {preset!r} does not build the shape of {model_dir} "
                             f"(initial vs trained: {differ}); rerun the train stage (dvc repro)")
        desc = f"{preset} T5 from scratch, seed {seed} (untrained)"
    else:
        model, _ = load_pretrained(init)
        desc = f"pretrained {init} (before fine-tuning)"
    # The trained model's generation config (special token ids, defaults) so only the weights differ.
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    return model.to(device=device, dtype=dtype).eval(), desc


# ----------------------------------------------------------------------------- evaluation
def select_examples(test: pd.DataFrame, max_examples: int | None) -> pd.DataFrame:
    """All test pairs, or a fixed sample of `max_examples` chosen by a stable hash of their ids.

    The hash (not the file order) decides, so a cap samples the whole split evenly and the same
    pairs are picked on every machine and run.
    """
    if max_examples is None or len(test) <= max_examples:
        return test.reset_index(drop=True)
    keys = [hashlib.blake2b(f"eval\x1f{q}\x1f{a}".encode(), digest_size=8).digest()
            for q, a in zip(test["question_id"].tolist(), test["answer_id"].tolist())]
    order = sorted(range(len(test)), key=keys.__getitem__)[:max_examples]
    return test.iloc[sorted(order)].reset_index(drop=True)


def score_model(model: Any, tokenizer: Any, sources: list[str], references: list[str], questions: Sequence[str],
                settings: dict[str, Any], p: dict[str, Any], rouge: Any
                ) -> tuple[dict[str, Any], pd.DataFrame, list[str], Generated]:
    """One model on the test pairs and the human-eval questions.

    Returns (metrics, per-example frame, answers to the questions, generations). The questions
    (a title, no body) join the test sources in one length-sorted generation pass.
    """
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    n = len(sources)
    question_sources = [format_source(q, None, include_body=False) for q in questions]
    src_ids = tokenizer([*sources, *question_sources], truncation=True, max_length=p["max_source_length"])["input_ids"]
    tgt_ids = tokenizer(text_target=references, truncation=True, max_length=p["max_target_length"])["input_ids"]
    gen = generate_ids(model, src_ids, generation_config(model, settings), p["batch_size"], pad_id, eos_id)
    texts = decode_answers(tokenizer, gen.sequences)
    predictions, answers = texts[:n], texts[n:]
    gen_lengths = gen.lengths[:n]
    loss = teacher_forced_loss(model, src_ids[:n], tgt_ids, p["batch_size"], pad_id)
    per_rouge = rouge.compute(predictions=predictions, references=references, use_aggregator=False)
    frame = pd.DataFrame({
        "prediction": predictions,
        "gen_tokens": gen_lengths.astype(np.int32),
        "loss": (loss[:, 0] / np.maximum(loss[:, 1], 1)).astype(np.float32),
        **{t: np.asarray(per_rouge[t], dtype=np.float32) for t in ROUGE_TYPES},
        "repetitive": [is_repetitive(t) for t in predictions],
    })
    max_new = int(settings.get("max_new_tokens", 256))
    metrics = {
        **{t: round(float(np.mean(per_rouge[t])), 6) for t in ROUGE_TYPES},
        "gen_len": round(float(gen_lengths.mean()), 3),
        "test_loss": round(float(loss[:, 0].sum() / max(loss[:, 1].sum(), 1)), 6),
        "repetition_rate": round(float(frame["repetitive"].mean()), 6),
        "distinct_2": round(distinct_n(predictions, 2), 6),
        "empty_rate": round(empty_rate(predictions), 6),
        # Answers cut at max_new_tokens (no EOS): many means the limit, not the model, ended them.
        "hit_max_new_tokens": round(float(np.mean(gen_lengths >= max_new)), 6),
    }
    return metrics, frame, answers, gen


def read_questions(path: Path = QUESTIONS_FILE) -> list[str]:
    """Questions of a human-evaluation file: one a line; blank lines and # comments skipped."""
    if not path.is_file():
        raise StageError(f"{path} is missing: one question a line (the seed's six are versioned in git)")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    questions = [ln for ln in lines if ln and not ln.startswith("#")]
    if not questions:
        raise StageError(f"{path} holds no questions")
    return questions


def close_fences(text: str) -> str:
    """The text with an unfinished ``` block closed, so one answer cannot swallow the rest of a page."""
    return text + "\n```" if text.count("```") % 2 else text


def markdown_answer(text: str) -> str:
    """An answer for human_eval.md: blank-line runs and trailing spaces outside code collapsed,
    fences closed. Markdown renders prose the same either way, and the diff stays short; code
    and the raw text (data/eval/predictions.parquet) are untouched."""
    parts = text.strip().split("```")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"\n\s*\n\s*\n+", "\n\n", re.sub(r"[ \t]+\n", "\n", parts[i]))
    return close_fences("```".join(parts).strip()) or "*(empty answer)*"


def human_eval_markdown(questions: Sequence[str], answers: Sequence[str], initial_answers: Sequence[str] | None,
                        settings: dict[str, Any], initial_desc: str, warning: str | None = None) -> str:
    """metrics/human_eval.md: each question with the trained model's answer (and the initial one folded).

    Nothing run-dependent (times, paths of temp dirs) goes in, so `git diff` shows answer changes only.
    """
    gen = ", ".join(f"{k}={settings[k]}" for k in GENERATE_KEYS if k in settings)
    out = ["# Human evaluation: answers of models/qa-t5", "",
           f"Written by the `evaluate` stage from `{QUESTIONS_FILE.as_posix()}` ({gen}).",
           "Read the answers; `git diff <commit> -- metrics/human_eval.md` shows how they changed.", ""]
    if warning:
        out += [f"> **{warning[0].upper()}{warning[1:]}**", ""]
    for i, q in enumerate(questions):
        out += [f"## {i + 1}. {q}", "", markdown_answer(answers[i]), ""]
        if initial_answers is not None:
            out += [f"<details><summary>initial model: {initial_desc}</summary>", "",
                    markdown_answer(initial_answers[i]), "", "</details>", ""]
    return "\n".join(out)


CPU_BATCH, CUDA_BATCH = 32, 256


def batch_size(setting: Any) -> int:
    """`evaluate.batch_size`: an int, or auto = 32 inputs on CPU, 256 on CUDA.

    On a GPU each decoding step costs about the same for 32 or 256 inputs (kernel launches, not
    arithmetic, bound it), so big batches are what makes 2,000 x 256 tokens fit in a minute.
    """
    if setting in (None, "auto"):
        import torch

        return CUDA_BATCH if torch.cuda.is_available() else CPU_BATCH
    return int(setting)


def eval_params(params: dict[str, Any]) -> dict[str, Any]:
    e = params.get("evaluate", {}) or {}
    m = params.get("model", {}) or {}
    cap = e.get("max_examples")
    p = {
        "max_examples": None if cap in (None, "null", "all") else int(cap),
        "batch_size": batch_size(e.get("batch_size", "auto")),
        "initial_model": bool(e.get("initial_model", True)),
        "cpu_threads": e.get("cpu_threads", "auto"),
        "include_body": bool(m.get("include_body", True)),
        "max_source_length": int(m.get("max_source_length", 512)),
        "max_target_length": int(m.get("max_target_length", 256)),
    }
    if p["batch_size"] < 1 or (p["max_examples"] is not None and p["max_examples"] < 1):
        raise StageError(f"evaluate: batch_size and max_examples must be >= 1, got {e}")
    return p


def run(params: dict[str, Any]) -> dict[str, Any]:
    """The whole stage over the current directory; returns the metrics written."""
    from stages.core.console import console_err

    started = time.perf_counter()
    p = eval_params(params)
    settings = generate_settings(params)
    if not TEST_SPLIT.exists():
        raise StageError(f"{TEST_SPLIT} is missing; run the split stage first (dvc repro split)")
    questions = read_questions()
    model, tokenizer = load_trained()
    summary = read_summary(MODEL_DIR, sum(x.numel() for x in model.parameters()))
    warning = caution(summary)
    threads = set_cpu_threads(model, p["cpu_threads"])
    test = pd.read_parquet(TEST_SPLIT, columns=["question_id", "answer_id", "title", "question", "answer"])
    chosen = select_examples(test, p["max_examples"])
    if chosen.empty:
        raise StageError(f"{TEST_SPLIT} holds no pairs to evaluate")
    sources = [format_source(t, q, p["include_body"]) for t, q in zip(chosen["title"], chosen["question"])]
    references = chosen["answer"].tolist()
    rouge = load_rouge()

    loaded = time.perf_counter()
    metrics, frame, answers, gen = score_model(model, tokenizer, sources, references, questions, settings, p, rouge)
    device = next(model.parameters()).device
    timing = [f"imports and loading {loaded - started:.1f} s",
              f"trained model {time.perf_counter() - loaded:.1f} s (generation {gen.seconds:.1f} s, "
              f"{gen.lengths.sum() / max(gen.seconds, 1e-9):,.0f} tokens/s)"]
    del model

    initial_metrics, initial_answers, initial_desc = None, None, ""
    init_frame = pd.DataFrame(index=frame.index, columns=frame.columns)
    if p["initial_model"]:
        t0 = time.perf_counter()
        initial, initial_desc = load_initial(params, tokenizer)
        initial_metrics, init_frame, initial_answers, init_gen = score_model(
            initial, tokenizer, sources, references, questions, settings, p, rouge)
        timing.append(f"initial model {time.perf_counter() - t0:.1f} s (generation {init_gen.seconds:.1f} s)")
        del initial

    predictions = pd.DataFrame({
        "question_id": chosen["question_id"].astype("int64"), "answer_id": chosen["answer_id"].astype("int64"),
        "title": chosen["title"], "reference": references,
        **{c: frame[c] for c in frame.columns},
        **{f"initial_{c}": init_frame[c] for c in init_frame.columns},
    })
    ref_lengths = [len(x) - 1 for x in tokenizer(text_target=references, verbose=False)["input_ids"]]  # minus </s>
    result = {
        **metrics,
        "examples": len(chosen),
        "test_pairs": len(test),
        "max_examples": p["max_examples"],
        **({"initial": initial_metrics} if initial_metrics else {}),
        "reference": {"len": round(float(np.mean(ref_lengths)), 3),
                      "repetition_rate": round(repetition_rate(references), 6),
                      "distinct_2": round(distinct_n(references, 2), 6)},
    }

    tmp_eval = tmp_sibling(EVAL_DIR)
    tmp_eval.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(predictions, schema=PREDICTION_SCHEMA, preserve_index=False),
                   tmp_eval / "predictions.parquet", compression="zstd")
    tmp_md = tmp_sibling(HUMAN_EVAL_FILE)
    tmp_md.parent.mkdir(parents=True, exist_ok=True)
    tmp_md.write_text(human_eval_markdown(questions, answers, initial_answers, settings, initial_desc, warning),
                      encoding="utf-8")
    (tmp_eval / HUMAN_EVAL_JSON).write_text(json.dumps(
        {"model": summary, "caution": warning, "settings": settings,
         "answers": [{"question": q, "answer": a} for q, a in zip(questions, answers)]},
        indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for final, tmp in {EVAL_DIR: tmp_eval, HUMAN_EVAL_FILE: tmp_md}.items():
        commit_path(tmp, final)
    write_json(METRICS_FILE, result)
    print_summary(result, initial_desc, console_err())
    where = f"cpu ({threads} thread{'s' if threads > 1 else ''})" if device.type == "cpu" else device.type
    console_err().print(f"evaluate: {len(chosen)} test pairs + {len(questions)} questions on {where} in "
                        f"{time.perf_counter() - started:.1f} s: {'; '.join(timing)}")
    return result


def print_summary(result: dict[str, Any], initial_desc: str, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"evaluate: {result['examples']} of {result['test_pairs']} test pairs")
    t.add_column("metric")
    t.add_column("trained", justify="right")
    t.add_column("initial", justify="right")
    t.add_column("reference", justify="right")
    initial = result.get("initial") or {}
    for key in (*ROUGE_TYPES, "test_loss", "gen_len", "repetition_rate", "distinct_2", "empty_rate"):
        ref_key = "len" if key == "gen_len" else key
        ref = result["reference"].get(ref_key)
        t.add_row(key, f"{result[key]:.4g}", "-" if key not in initial else f"{initial[key]:.4g}",
                  "" if ref is None else f"{ref:.4g}")
    if initial_desc:
        t.caption = f"initial: {initial_desc}"
    console.print(t)


def main() -> None:
    def body() -> None:
        clean_stale_tmp(DATA, METRICS)
        run(load_params())

    exit_on_stage_error(body)


if __name__ == "__main__":
    main()
