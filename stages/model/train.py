"""Stage `train`: T5 trained over the shards in order, `train.epochs_per_shard` epochs each, as one run.

The seed fine-tuned round by round on 20,000-pair chunks in separate notebook runs and lost a
round whenever Colab died. Here the rounds are one schedule of batches (shard 0 epoch 0, shard 0
epoch 1, ..., shard 1 epoch 0, ...) driven by one `Trainer`, so the optimizer and learning-rate
schedule carry across shards, the validation loss is measured at every shard's end, and a
checkpoint is written at every shard's end and every `train.checkpoint_steps` steps into
models/.checkpoints/ (not a DVC output: DVC would delete or cache it half-written). Rerun after a
crash, the stage resumes from the newest complete checkpoint, provided the params and data are
those of the interrupted run; a finished run deletes its checkpoints.

Batches are padded per batch (DataCollatorForSeq2Seq) with label padding -100, so padding never
counts in the loss. Targets longer than `model.max_target_length` are cut and their share reported.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq

from stages.core.console import exit_on_stage_error
from stages.core.errors import StageError
from stages.core.outputs import DATA, METRICS, atomic_path, clean_stale_tmp, write_json
from stages.core.params import load_params
from stages.model.caution import SUMMARY_FILE, caution, training_summary
from stages.model.prompt import format_source

# OpenMP threads busy-wait for each other by default; on a busy machine (shared CI runner, 2 cores)
# a descheduled thread stalls every op: measured 7 s/step with 2 threads vs 0.85 s passive.
# Set before torch is first imported (it is imported lazily, below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL_DIR = Path("models") / "qa-t5"
CHECKPOINT_DIR = Path("models") / ".checkpoints" / "qa-t5"
LIVE_DIR = Path("dvclive")
SHARD_DIR = DATA / "shards"
VAL_PATH = DATA / "split" / "val.parquet"
TOKENIZER_DIR = DATA / "tokenizer"
TRAIN_METRICS = METRICS / "train.json"
LOSS_SVG = METRICS / "train_loss.svg"
RUN_FILE = "run.json"            # fingerprint of the run a checkpoint folder belongs to
MEGABATCH = 50                   # batches whose examples are length-sorted together (group_by_length)


# ----------------------------------------------------------------------------- params
@dataclass
class TrainConfig:
    """The `train:` and length settings of `model:`, checked once."""
    seed: int = 42
    epochs_per_shard: int = 3
    batch_size: int = 8
    eval_batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    checkpoint_steps: int = 500
    logging_steps: int = 10
    group_by_length: bool = True
    max_source_length: int = 512
    max_target_length: int = 256
    include_body: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        t, m = params.get("train", {}) or {}, params.get("model", {}) or {}
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in t.items() if k in known}
        for k in ("max_source_length", "max_target_length", "include_body"):
            if k in m:
                values[k] = m[k]
        cfg = cls(**values)
        for k in ("epochs_per_shard", "batch_size", "eval_batch_size", "checkpoint_steps", "logging_steps",
                  "max_source_length", "max_target_length"):
            if int(getattr(cfg, k)) <= 0:
                raise StageError(f"train: {k} must be a positive integer, got {getattr(cfg, k)!r}")
            setattr(cfg, k, int(getattr(cfg, k)))
        cfg.learning_rate, cfg.weight_decay = float(cfg.learning_rate), float(cfg.weight_decay)
        if cfg.learning_rate <= 0:
            raise StageError(f"train: learning_rate must be positive, got {cfg.learning_rate}")
        return cfg


# ----------------------------------------------------------------------------- encoding
@dataclass
class LengthStats:
    """Token counts of one set of pairs before truncation."""
    pairs: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    source_tokens: int = 0        # after truncation: what the model reads
    target_tokens: int = 0

    def add(self, other: "LengthStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def summary(self) -> dict[str, Any]:
        n = max(self.pairs, 1)
        return {"pairs": self.pairs,
                "truncated_source_share": round(self.truncated_sources / n, 4),
                "truncated_target_share": round(self.truncated_targets / n, 4),
                "mean_source_tokens": round(self.source_tokens / n, 1),
                "mean_target_tokens": round(self.target_tokens / n, 1)}


def truncate(ids: list[int], max_length: int, eos_id: int | None) -> list[int]:
    """Cut to max_length, keeping a final </s> (the model must still learn where answers end)."""
    if len(ids) <= max_length:
        return ids
    if eos_id is not None and ids and ids[-1] == eos_id:
        return ids[:max_length - 1] + [eos_id]
    return ids[:max_length]


def encode_pairs(tokenizer: Any, titles: Sequence[str], questions: Sequence[str | None], answers: Sequence[str],
                 cfg: TrainConfig) -> tuple[list[dict[str, list[int]]], LengthStats]:
    """Pure (given the tokenizer): pairs -> model features (input_ids, attention_mask, labels) + stats."""
    sources = [format_source(t, q, cfg.include_body) for t, q in zip(titles, questions)]
    # Untruncated first (verbose=False: long ones are expected), to count what truncation cuts.
    src = tokenizer(sources, add_special_tokens=True, verbose=False)["input_ids"]
    tgt = tokenizer(text_target=[a or "" for a in answers], add_special_tokens=True, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stats = LengthStats(pairs=len(sources))
    features = []
    for s, t in zip(src, tgt):
        stats.truncated_sources += len(s) > cfg.max_source_length
        stats.truncated_targets += len(t) > cfg.max_target_length
        s, t = truncate(s, cfg.max_source_length, eos), truncate(t, cfg.max_target_length, eos)
        stats.source_tokens += len(s)
        stats.target_tokens += len(t)
        features.append({"input_ids": s, "attention_mask": [1] * len(s), "labels": t})
    return features, stats


def encode_parquet(tokenizer: Any, path: Path, cfg: TrainConfig) -> tuple[list[dict[str, list[int]]], LengthStats]:
    cols = pq.read_table(path, columns=["title", "question", "answer"]).to_pydict()
    return encode_pairs(tokenizer, cols["title"], cols["question"], cols["answer"], cfg)


# ----------------------------------------------------------------------------- schedule
@dataclass
class Schedule:
    """Every optimizer step of the run: which shard and which of its rows form the batch."""
    batches: list[tuple[int, np.ndarray]]
    shard_end_steps: list[int]           # global step (1-based) at which each shard's last batch is done

    def __len__(self) -> int:
        return len(self.batches)


def build_schedule(lengths: Sequence[np.ndarray], epochs: int, batch_size: int, seed: int,
                   group_by_length: bool) -> Schedule:
    """Pure: the batches of the whole run, shard by shard in order, `epochs` shuffled passes each.

    With `group_by_length`, rows are shuffled, cut into megabatches of MEGABATCH batches and
    sorted by length inside each, so a batch holds similar lengths (less padding) while the order
    stays random at the scale of a megabatch. Each (seed, shard, epoch) has its own generator, so
    a shard's batches do not depend on the shards before it.
    """
    batches: list[tuple[int, np.ndarray]] = []
    ends: list[int] = []
    for shard, shard_lengths in enumerate(lengths):
        n = len(shard_lengths)
        for epoch in range(epochs):
            order = np.random.default_rng([seed, shard, epoch]).permutation(n)
            if group_by_length:
                span = batch_size * MEGABATCH
                order = np.concatenate([chunk[np.argsort(-shard_lengths[chunk], kind="stable")]
                                        for chunk in np.array_split(order, max(1, math.ceil(n / span)))]) \
                    if n else order
            batches += [(shard, order[i:i + batch_size]) for i in range(0, n, batch_size)]
        ends.append(len(batches))
    return Schedule(batches, ends)


class ScheduleDataset:
    """Item i is the list of features of step i's batch; one shard is held in memory at a time."""

    def __init__(self, schedule: Schedule, load_shard: Callable[[int], list[dict[str, list[int]]]]):
        self.schedule = schedule
        self.load_shard = load_shard
        self._shard: int | None = None
        self._features: list[dict[str, list[int]]] = []

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, i: int) -> list[dict[str, list[int]]]:
        shard, rows = self.schedule.batches[i]
        if shard != self._shard:
            self._features, self._shard = self.load_shard(shard), shard
        return [self._features[r] for r in rows]


def chunk(features: list[dict[str, list[int]]], size: int) -> list[list[dict[str, list[int]]]]:
    return [features[i:i + size] for i in range(0, len(features), size)]


class BatchCollator:
    """The DataLoader hands over [one pre-formed batch]; pad it dynamically, labels padded with -100."""

    def __init__(self, tokenizer: Any, model: Any):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding="longest")

    def __call__(self, items: list[list[dict[str, list[int]]]]) -> dict[str, Any]:
        (batch,) = items
        return self.inner(batch)


# ----------------------------------------------------------------------------- checkpoints
def file_digest(paths: Iterable[Path]) -> str:
    h = hashlib.md5()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def run_fingerprint(params: dict[str, Any], data_files: Sequence[Path]) -> str:
    """What must be equal for a checkpoint to be resumed: training params, model, data."""
    relevant = {k: params.get(k) for k in ("model", "train", "tokenizer")}
    blob = json.dumps(relevant, sort_keys=True, default=str) + file_digest(data_files)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints whose trainer_state.json (written last by Trainer) parses, oldest first."""
    found = []
    if not folder.is_dir():
        return found
    for p in folder.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[1])
            state = json.loads((p / "trainer_state.json").read_text())
        except (ValueError, OSError, IndexError):
            continue
        if state.get("global_step") == step:
            found.append((step, p))
    return [p for _, p in sorted(found)]


def prepare_checkpoint_dir(folder: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from (None: start over). Foreign or half-written checkpoints are removed."""
    run_file = folder / RUN_FILE
    if folder.exists():
        previous = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
        if previous != fingerprint:
            if complete_checkpoints(folder):
                print(f"train: params or data changed since the interrupted run; its checkpoints in {folder} "
                      "are discarded and training starts over")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    good = complete_checkpoints(folder)
    for p in folder.glob("checkpoint-*"):
        if p not in good:
            shutil.rmtree(p, ignore_errors=True)    # killed while writing it
    return good[-1] if good else None


# ----------------------------------------------------------------------------- callbacks
def _callbacks(shard_end_steps: list[int], has_eval: bool, live: Any, run_params: dict[str, Any]) -> list[Any]:
    from transformers import TrainerCallback
    from transformers.integrations import DVCLiveCallback

    ends = set(shard_end_steps)

    class ShardBoundaries(TrainerCallback):
        """At a shard's end: log the train loss, measure the val loss, write a checkpoint."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in ends:
                control.should_log = True
                control.should_evaluate = has_eval
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                logs["shard"] = sum(step < state.global_step for step in shard_end_steps)

    class StepDVCLive(DVCLiveCallback):
        """transformers' DVCLiveCallback with dvclive's step = the optimizer step (not the log count),
        so curves of a resumed run continue on the same x axis, and the soqa params logged instead
        of TrainingArguments (whose batch size is 1 here: each dataset item is a whole batch)."""

        def setup(self, args, state, model):
            self._initialized = True
            if state.is_world_process_zero:
                self.live.log_params(run_params)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return [ShardBoundaries(), StepDVCLive(live=live)]


def trim_live_history(live_dir: Path, last_step: int) -> None:
    """Drop dvclive rows logged after the checkpoint being resumed (they are logged again)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head = lines[0].split("\t")
        if "step" not in head:
            continue
        col = head.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) <= last_step]
        tsv.write_text("\n".join(kept) + "\n")


# ----------------------------------------------------------------------------- outputs
def loss_svg(train: list[tuple[int, float]], val: list[tuple[int, float]], shard_ends: list[int]) -> str:
    """A self-contained SVG of the loss curves (viewable offline; `dvc plots show` embeds it as is)."""
    w, h, pad = 640, 360, 48
    points = train + val
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"><text x="20" y="30">no loss logged</text></svg>\n'
    xmax = max(max(s for s, _ in points), 1)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    hi = hi if hi > lo else lo + 1

    def xy(step: float, v: float) -> str:
        return f"{pad + (w - 2 * pad) * step / xmax:.1f},{h - pad - (h - 2 * pad) * (v - lo) / (hi - lo):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">step (dashed: end of a shard)</text>',
             f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end">{hi:.2f}</text>',
             f'<text x="{pad - 6}" y="{h - pad}" text-anchor="end">{lo:.2f}</text>',
             f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end">{xmax}</text>']
    for s in shard_ends:
        x = pad + (w - 2 * pad) * s / xmax
        parts.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{h - pad}" stroke="#bbb" stroke-dasharray="4"/>')
    for name, series, colour, y in (("train loss", train, "#1f77b4", 20), ("val loss", val, "#d62728", 36)):
        if series:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(xy(s, v) for s, v in series)}"/>')
            parts += [f'<circle cx="{xy(s, v).split(",")[0]}" cy="{xy(s, v).split(",")[1]}" r="3" fill="{colour}"/>'
                      for s, v in series] if len(series) < 60 else []
        parts.append(f'<text x="{w - pad}" y="{y}" text-anchor="end" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def data_version(lock_path: Path = Path("dvc.lock")) -> dict[str, Any]:
    """The DVC hashes of the shards and the split this model was trained on, as dvc.lock records them."""
    import yaml

    found: dict[str, Any] = {}
    if lock_path.is_file():
        lock = yaml.safe_load(lock_path.read_text()) or {}
        for stage in lock.get("stages", {}).values():
            for out in stage.get("outs", []) or []:
                if out.get("path") in ("data/shards", "data/split", "data/tokenizer"):
                    found[out["path"]] = out.get("md5")
    return found


def model_card(meta: dict[str, Any], params: dict[str, Any]) -> str:
    import yaml

    m = meta["metrics"]
    warn = caution(training_summary(meta["model"], meta["data"]["train_pairs"], m["steps"]))
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text2text-generation", "language: en", "---", "",
        "# qa-t5: answers Python questions in the style of Stack Overflow answers", "",
        f"A T5 encoder-decoder trained by the soqa `train` stage ({meta['model']['init']}"
        + (f", preset {meta['model']['preset']}" if meta['model']['preset'] else "")
        + f", {meta['model']['parameters']:,} parameters, vocabulary {meta['model']['vocab_size']}).", "",
        *([warn, ""] if warn else []),
        "Input: the text `stages/model/prompt.py` `format_source(title, question)` builds "
        f"(include_body: {params.get('model', {}).get('include_body', True)}). Output: the answer text, "
        "code blocks fenced with ``` and indentation kept.", "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained('models/qa-t5')",
        "model = AutoModelForSeq2SeqLM.from_pretrained('models/qa-t5')",
        "ids = tok('Answer this Python question: How to install numpy?', return_tensors='pt').input_ids",
        "out = model.generate(ids, max_new_tokens=256, num_beams=4, no_repeat_ngram_size=4, repetition_penalty=1.2)",
        "print(tok.decode(out[0], skip_special_tokens=True))  # settings: params.yaml generate (evaluate, soqa ask)",
        "```", "",
        "## Data", "",
        "Stack Overflow Python questions and answers (CC BY-SA), curated by the soqa DVC pipeline.", "",
        f"- shards: {meta['data']['shards']} ({meta['data']['train_pairs']} train pairs), "
        f"{meta['data']['val_pairs']} validation pairs",
        f"- content digest of shards + validation split: `{meta['data']['digest']}`",
    ]
    for path, md5 in meta["data"]["dvc_lock"].items():
        lines.append(f"- `{path}` in dvc.lock: `{md5}`")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    # Run-to-run timings (tokens/s, wall time) stay in metrics/train.json: the model folder's bytes
    # depend only on data, params and code, so retraining the same thing gives the same DVC hash.
    for k in ("train_loss", "val_loss", "steps", "tokens_seen", "device",
              "precision", "truncated_target_share", "truncated_source_share"):
        lines.append(f"| {k} | {m.get(k)} |")
    lines += ["", "Validation loss at the end of each shard: "
              + ", ".join(f"shard {i}: {v:.4f}" for i, v in enumerate(m.get("val_loss_by_shard", [])) if v is not None),
              "", "## Params", "", "```yaml",
              yaml.safe_dump({k: params.get(k) for k in ("tokenizer", "model", "train")}, sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(lines)


def special_tokens(model: Any, tokenizer: Any) -> None:
    """The generation config saved with the model: its special token ids only. How answers are
    generated (params.yaml `generate:`) is evaluate's and `soqa ask`'s business, so changing it
    reruns evaluate, not training."""
    gc = model.generation_config
    gc.max_length = None
    gc.pad_token_id, gc.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gc.decoder_start_token_id = model.config.decoder_start_token_id
    gc.validate(strict=True)


# ----------------------------------------------------------------------------- the run
def training_arguments(cfg: TrainConfig, device: Any, output_dir: Path, total_steps: int, quiet: bool,
                       save: bool = True, torch_compile: bool = False) -> Any:
    """TrainingArguments of a run (also used by bench/train.py, so the benchmark measures this setup).

    Each dataset item is a whole pre-formed batch (see ScheduleDataset), hence batch size 1 and a
    sequential sampler: the schedule already fixed the order and the shuffling.
    """
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=total_steps, per_device_train_batch_size=1, per_device_eval_batch_size=1,
        train_sampling_strategy="sequential", remove_unused_columns=False, dataloader_num_workers=0,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps, max_grad_norm=1.0,
        optim="adamw_torch_fused" if device.kind == "cuda" else "adamw_torch",
        bf16=device.bf16, fp16=False, tf32=True if device.bf16 else None, use_cpu=device.kind == "cpu",
        eval_strategy="no", save_strategy="steps" if save else "no", save_steps=cfg.checkpoint_steps,
        save_total_limit=2, logging_strategy="steps", logging_steps=cfg.logging_steps, logging_first_step=True,
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=quiet, torch_compile=torch_compile,
        dataloader_pin_memory=device.kind == "cuda")


@dataclass
class RunResult:
    metrics: dict[str, Any]
    model: Any
    tokenizer: Any
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train_run(params: dict[str, Any], shard_paths: Sequence[Path], val_path: Path | None, checkpoint_dir: Path,
              live_dir: Path, tokenizer_dir: Path = TOKENIZER_DIR, max_steps: int | None = None,
              quiet: bool = False) -> RunResult:
    """Train (or resume) over the shards; returns the final model and its metrics. Writes only under
    `checkpoint_dir` and `live_dir`; the caller saves the model and deletes the checkpoints."""
    from dvclive import Live
    from transformers import Trainer, set_seed

    from stages.model.modeling import detect_device, load_model

    cfg = TrainConfig.from_params(params)
    if not shard_paths:
        raise StageError(f"train: no shards to train on in {SHARD_DIR} (is the train split empty?)")
    data_files = list(shard_paths) + ([val_path] if val_path else [])
    resume = prepare_checkpoint_dir(checkpoint_dir, run_fingerprint(params, data_files))

    set_seed(cfg.seed)
    model, tokenizer, model_desc = load_model(params.get("model", {}) or {}, tokenizer_dir, cfg.seed)
    device = detect_device()

    # One pass over the data for lengths (schedule, token counts, truncation share); shards are
    # encoded again when training reaches them, so only one is held in memory at a time.
    lengths, train_stats = [], LengthStats()
    step_tokens: list[np.ndarray] = []
    for path in shard_paths:
        feats, stats = encode_parquet(tokenizer, path, cfg)
        train_stats.add(stats)
        lengths.append(np.array([len(f["input_ids"]) + len(f["labels"]) for f in feats], dtype=np.int64))
    schedule = build_schedule(lengths, cfg.epochs_per_shard, cfg.batch_size, cfg.seed, cfg.group_by_length)
    tokens_per_step = np.array([int(lengths[s][rows].sum()) for s, rows in schedule.batches], dtype=np.int64)
    if train_stats.pairs == 0:
        raise StageError("train: the shards hold no pairs")
    val_features, val_stats = (encode_parquet(tokenizer, val_path, cfg) if val_path and val_path.exists()
                               else ([], LengthStats()))
    dataset = ScheduleDataset(schedule, lambda i: encode_parquet(tokenizer, shard_paths[i], cfg)[0])
    eval_batches = chunk(val_features, cfg.eval_batch_size) or None

    total_steps = len(schedule) if max_steps is None else min(max_steps, len(schedule))
    args = training_arguments(cfg, device, checkpoint_dir, total_steps, quiet)
    resume_step = int(resume.name.split("-")[1]) if resume else 0
    if resume:
        trim_live_history(live_dir, resume_step)
        print(f"train: resuming from {resume} (step {resume_step} of {total_steps})")
    live = Live(dir=str(live_dir), resume=bool(resume), dvcyaml=False, save_dvc_exp=False, report=None)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_batches,
                      data_collator=BatchCollator(tokenizer, model), processing_class=tokenizer,
                      callbacks=_callbacks(schedule.shard_end_steps, eval_batches is not None, live,
                                                {k: params.get(k) for k in ("tokenizer", "model", "train")}))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - started

    history = trainer.state.log_history
    train_points = [(e["step"], e["loss"]) for e in history if "loss" in e]
    val_points = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    val_by_step = dict(val_points)
    tokens_this_run = int(tokens_per_step[resume_step:total_steps].sum())
    metrics = {
        "train_loss": round(train_points[-1][1], 4) if train_points else None,
        "val_loss": round(val_points[-1][1], 4) if val_points else None,
        "val_loss_by_shard": [round(val_by_step[s], 4) if s in val_by_step else None
                              for s in schedule.shard_end_steps if s <= total_steps],
        "steps": int(trainer.state.global_step),
        "shards": len(shard_paths),
        "epochs_per_shard": cfg.epochs_per_shard,
        "tokens_seen": int(tokens_per_step[:total_steps].sum()),
        "tokens_per_s": round(tokens_this_run / train_seconds, 1) if train_seconds > 0 else None,
        "wall_time_s": round(train_seconds, 2),
        "resumed_from_step": resume_step,
        "device": device.name,
        "precision": device.precision,
        "truncated_target_share": train_stats.summary()["truncated_target_share"],
        "truncated_source_share": train_stats.summary()["truncated_source_share"],
        "train_lengths": train_stats.summary(),
        "val_lengths": val_stats.summary(),
        "model": model_desc,
    }
    return RunResult(metrics, trainer.model, tokenizer, history)


def shard_files(folder: Path = SHARD_DIR) -> list[Path]:
    return sorted(folder.glob("train-*.parquet"))


def main() -> None:
    def body() -> None:
        params = load_params()
        started = time.perf_counter()
        clean_stale_tmp(Path("models"), METRICS)
        shards = shard_files()
        # Progress bars only on a terminal: in CI and under `dvc repro > log` they are noise.
        quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty()
        if quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        result = train_run(params, shards, VAL_PATH if VAL_PATH.exists() else None, CHECKPOINT_DIR, LIVE_DIR,
                           quiet=quiet)
        model, tokenizer, metrics = result.model, result.tokenizer, result.metrics
        metrics["wall_time_s"] = round(time.perf_counter() - started, 2)   # the stage's, load to save
        special_tokens(model, tokenizer)
        meta = {"model": metrics["model"], "metrics": metrics,
                "data": {"shards": len(shards), "train_pairs": metrics["train_lengths"]["pairs"],
                         "val_pairs": metrics["val_lengths"]["pairs"],
                         "digest": file_digest(shards + ([VAL_PATH] if VAL_PATH.exists() else [])),
                         "dvc_lock": data_version()}}
        with atomic_path(MODEL_DIR) as tmp:
            model.save_pretrained(str(tmp))
            # transformers records whether HF_HUB_OFFLINE was set at load time: not the model's business.
            tokenizer.init_kwargs.pop("local_files_only", None)
            tokenizer.save_pretrained(str(tmp))
            (tmp / "README.md").write_text(model_card(meta, params), encoding="utf-8")
            summary = training_summary(metrics["model"], metrics["train_lengths"]["pairs"], metrics["steps"])
            (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        shard_ends = [e["step"] for e in result.log_history if "eval_loss" in e]
        with atomic_path(LOSS_SVG) as tmp:
            tmp.write_text(loss_svg([(e["step"], e["loss"]) for e in result.log_history if "loss" in e],
                                    [(e["step"], e["eval_loss"]) for e in result.log_history if "eval_loss" in e],
                                    shard_ends), encoding="utf-8")
        write_json(TRAIN_METRICS, {k: v for k, v in metrics.items() if k != "model"} | {"parameters": metrics["model"]["parameters"]})
        shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)   # finished: nothing left to resume
        with contextlib.suppress(OSError):
            CHECKPOINT_DIR.parent.rmdir()                   # models/.checkpoints, when nothing else is in it
        print(f"train: {metrics['steps']} steps over {metrics['shards']} shard(s) on {metrics['device']} "
              f"({metrics['precision']}), train loss {metrics['train_loss']}, val loss {metrics['val_loss']}, "
              f"{metrics['tokens_per_s']} tokens/s, {metrics['wall_time_s']} s -> {MODEL_DIR}")

    exit_on_stage_error(body)


if __name__ == "__main__":
    main()
