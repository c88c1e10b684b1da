"""The train stage: schedule over shards, masking, presets, pretrained folders, determinism,
kill -9 and resume, and the stage under real DVC (`dvc exp run -S ...`, `dvc exp show`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Before torch is imported anywhere in this process (see stages/model/train.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import copy_project, env, run
from stages.core.errors import StageError
from stages.core.schemas import PAIR_SCHEMA
from stages.model.train import (BatchCollator, LengthStats, TrainConfig, build_schedule, complete_checkpoints,
                                encode_pairs, prepare_checkpoint_dir, train_run, truncate)

ANSWERS = [
    "Use a list comprehension:\n\n```\nsquares = [x * x for x in range(10)]\n```",
    "```\nwith open('out.txt', 'w') as fh:\n    fh.write('hello')\n```\n\nThe file is closed for you.",
    "`pip install numpy` in a terminal.",
    "Lists are mutable, tuples are not:\n\n```\nt = (1, 2)\nl = [1, 2]\nl.append(3)\n```",
    "```\ndef index_of(items, x):\n    for i, item in enumerate(items):\n        if item == x:\n            return i\n    return -1\n```",
]


def pairs(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({
        "question_id": ids, "answer_id": [i + 10_000 for i in ids], "answer_rank": [1] * n,
        "title": [f"How do I do thing {i} in Python?" for i in ids],
        "question": [f"I tried this:\n\n```\nx = {i}\nprint(x)\n```\n\nbut it fails." for i in ids],
        "answer": [ANSWERS[i % len(ANSWERS)] * (1 + i % 3) for i in ids],
        "question_score": [1] * n, "answer_score": [2 + i % 4 for i in ids],
    }, schema=PAIR_SCHEMA)


def write_data(root: Path, shard_rows: list[int], val_rows: int = 4) -> list[Path]:
    """data/shards/train-*.parquet, data/split/{train,val}.parquet under root."""
    (root / "data" / "shards").mkdir(parents=True, exist_ok=True)
    (root / "data" / "split").mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for i, n in enumerate(shard_rows):
        path = root / "data" / "shards" / f"train-{i:05d}.parquet"
        pq.write_table(pairs(n, start), path)
        shards.append(path)
        start += n
    pq.write_table(pairs(sum(shard_rows), 0), root / "data" / "split" / "train.parquet")
    pq.write_table(pairs(val_rows, 90_000), root / "data" / "split" / "val.parquet")
    return shards


def small_params(**train: object) -> dict:
    return {
        "tokenizer": {"vocab_size": 600},
        "model": {"init": "scratch", "preset": "tiny", "max_source_length": 48, "max_target_length": 24,
                  "include_body": True},
        "train": {"seed": 7, "epochs_per_shard": 2, "batch_size": 4, "eval_batch_size": 4, "learning_rate": 0.003,
                  "checkpoint_steps": 100, "logging_steps": 1, **train},
        "generate": {"max_new_tokens": 32, "num_beams": 2, "no_repeat_ngram_size": 3, "repetition_penalty": 1.1},
    }


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from stages.model.tokenizer import learn_tokenizer, to_transformers, training_texts

    folder = tmp_path_factory.mktemp("tokenizer")
    texts = list(training_texts(pairs(60).to_batches()))
    to_transformers(learn_tokenizer(texts, vocab_size=600), 48).save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------- pure parts
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4), epochs=st.integers(1, 3),
       batch=st.integers(1, 9), grouped=st.booleans())
def test_schedule_walks_shards_in_order_epochs_each(sizes: list[int], epochs: int, batch: int, grouped: bool) -> None:
    lengths = [np.arange(n)[::-1] % 7 for n in sizes]
    sched = build_schedule(lengths, epochs, batch, seed=3, group_by_length=grouped)
    shard_order = [s for s, _ in sched.batches]
    assert shard_order == sorted(shard_order)                        # shard by shard, never back
    assert all(len(rows) <= batch for _, rows in sched.batches)
    for s, n in enumerate(sizes):
        seen = np.concatenate([rows for sh, rows in sched.batches if sh == s] or [np.array([], int)])
        assert sorted(seen.tolist()) == sorted(list(range(n)) * epochs)   # every row, `epochs` times
        assert sched.shard_end_steps[s] == sum(1 for sh in shard_order if sh <= s)
    again = build_schedule(lengths, epochs, batch, seed=3, group_by_length=grouped)
    assert all((a[1] == b[1]).all() for a, b in zip(sched.batches, again.batches))


def test_schedule_groups_lengths_and_shuffles_epochs() -> None:
    lengths = [np.random.default_rng(0).integers(1, 500, 64)]
    sched = build_schedule(lengths, 2, 4, seed=1, group_by_length=True)
    first_epoch = np.concatenate([rows for _, rows in sched.batches[:16]])
    assert (np.diff(lengths[0][first_epoch]) <= 0).all()             # one megabatch: sorted by length
    plain = build_schedule(lengths, 2, 4, seed=1, group_by_length=False)
    e0, e1 = (np.concatenate([r for _, r in plain.batches[i:i + 16]]) for i in (0, 16))
    assert not (e0 == e1).all()                                       # each epoch its own order


def test_truncate_keeps_final_eos() -> None:
    assert truncate([5, 6, 7, 8, 1], 3, eos_id=1) == [5, 6, 1]
    assert truncate([5, 6, 1], 3, eos_id=1) == [5, 6, 1]
    assert truncate([5, 6, 7, 8], 3, eos_id=1) == [5, 6, 7]


def test_encode_counts_truncated_targets(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = TrainConfig(max_source_length=48, max_target_length=12)
    feats, stats = encode_pairs(tok, ["Short?", "Long?"], [None, None], ["ok", "word " * 60], cfg)
    assert stats.truncated_targets == 1 and stats.pairs == 2
    assert len(feats[1]["labels"]) == 12 and feats[1]["labels"][-1] == tok.eos_token_id
    assert stats.summary()["truncated_target_share"] == 0.5
    assert isinstance(stats, LengthStats)


def test_collator_pads_labels_with_minus_100(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    batch = [{"input_ids": [5, 6, 1], "attention_mask": [1, 1, 1], "labels": [7, 1]},
             {"input_ids": [5, 1], "attention_mask": [1, 1], "labels": [7, 8, 9, 1]}]
    out = BatchCollator(tok, model=None)([batch])
    assert out["labels"].tolist() == [[7, 1, -100, -100], [7, 8, 9, 1]]
    assert out["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_params_are_checked() -> None:
    with pytest.raises(StageError, match="batch_size"):
        TrainConfig.from_params({"train": {"batch_size": 0}})
    cfg = TrainConfig.from_params({"train": {"learning_rate": "2e-3"}, "model": {"max_target_length": 256}})
    assert cfg.learning_rate == 0.002 and cfg.max_target_length == 256


def test_checkpoints_resume_only_the_same_run(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    assert prepare_checkpoint_dir(folder, "run-a") is None
    for step, complete in ((4, True), (8, True), (12, False)):
        (folder / f"checkpoint-{step}").mkdir()
        if complete:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        else:   # killed while writing: the state file is half there
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_st')
    assert [p.name for p in complete_checkpoints(folder)] == ["checkpoint-4", "checkpoint-8"]
    assert prepare_checkpoint_dir(folder, "run-a") == folder / "checkpoint-8"
    assert not (folder / "checkpoint-12").exists()
    assert prepare_checkpoint_dir(folder, "run-b") is None            # other params/data: start over
    assert not list(folder.glob("checkpoint-*"))


# ----------------------------------------------------------------------------- models
def test_presets_have_flan_t5_shapes(shared: Path) -> None:
    from stages.model.modeling import t5_config

    from transformers import T5Config

    flan_small = T5Config.from_pretrained(str(shared / "models" / "flan-t5-small-tokenizer"))
    keys = ["d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "feed_forward_proj",
            "dense_act_fn", "is_gated_act", "scale_decoder_outputs", "tie_word_embeddings",
            "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
            "pad_token_id", "eos_token_id", "decoder_start_token_id", "vocab_size"]
    small = t5_config("t5-small", 32128)
    assert {k: getattr(small, k) for k in keys} == {k: getattr(flan_small, k) for k in keys}
    assert small.scale_decoder_outputs is False                      # T5 v1.1 / FLAN, not original T5
    base = t5_config("t5-base", 32128)   # google/flan-t5-base
    assert (base.d_model, base.d_ff, base.num_heads, base.num_layers, base.num_decoder_layers) == (768, 2048, 12, 12, 12)
    with pytest.raises(StageError, match="preset"):
        t5_config("huge", 100)


def test_hub_id_offline_fails_fast_with_a_folder_hint() -> None:
    from huggingface_hub.constants import is_offline_mode

    from stages.model.modeling import load_pretrained

    assert is_offline_mode()          # conftest: nothing reaches a hub
    started = time.perf_counter()
    with pytest.raises(StageError) as err:
        load_pretrained("google/flan-t5-base")
    assert time.perf_counter() - started < 10
    assert "local folder" in str(err.value) and "model.init=" in str(err.value)
    with pytest.raises(StageError, match="no such folder"):
        load_pretrained("./models/not-there")


def test_pretrained_folder_loads_and_trains(tmp_path: Path, shared: Path) -> None:
    """A tiny pretrained-style checkpoint (FLAN-T5's real tokenizer, random tiny weights) saved to a
    folder trains through `model.init: <folder>` with its own tokenizer."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

    flan_tok = AutoTokenizer.from_pretrained(str(shared / "models" / "flan-t5-small-tokenizer"))
    folder = tmp_path / "tiny-flan"
    config = T5Config(vocab_size=32128, d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1,
                      num_decoder_layers=1, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(str(folder))
    flan_tok.save_pretrained(str(folder))
    shards = write_data(tmp_path, [6])
    params = small_params(epochs_per_shard=1, batch_size=3)
    params["model"]["init"] = str(folder)
    res = train_run(params, shards, tmp_path / "data" / "split" / "val.parquet", tmp_path / "ck",
                    tmp_path / "live", tokenizer_dir=tmp_path / "no-tokenizer-needed", quiet=True)
    assert res.metrics["model"]["init"] == str(folder)
    assert len(res.tokenizer) == len(flan_tok) and res.tokenizer.decode([1]) == "</s>"
    assert res.metrics["steps"] == 2 and res.metrics["val_loss"] is not None
    assert AutoModelForSeq2SeqLM.from_pretrained(str(folder)).config.d_model == 32


def test_cpu_training_is_deterministic(tmp_path: Path, tokenizer_dir: Path) -> None:
    shards = write_data(tmp_path, [10, 6])
    val = tmp_path / "data" / "split" / "val.parquet"
    results = [train_run(small_params(), shards, val, tmp_path / f"ck{i}", tmp_path / f"live{i}",
                         tokenizer_dir=tokenizer_dir, quiet=True) for i in range(2)]
    a, b = (r.metrics for r in results)
    assert a["steps"] == b["steps"] == 2 * (3 + 2)                   # 2 epochs of ceil(10/4) + ceil(6/4)
    assert len(a["val_loss_by_shard"]) == 2 and None not in a["val_loss_by_shard"]
    assert (a["train_loss"], a["val_loss"], a["tokens_seen"]) == (b["train_loss"], b["val_loss"], b["tokens_seen"])
    sa, sb = (r.model.state_dict() for r in results)
    assert all((sa[k] == sb[k]).all() for k in sa)
    assert a["device"].startswith("cpu") and a["precision"] == "float32"
    other = train_run(small_params(seed=8), shards, val, tmp_path / "ck2", tmp_path / "live2",
                      tokenizer_dir=tokenizer_dir, quiet=True)
    assert other.metrics["train_loss"] != a["train_loss"]           # the seed matters


# ----------------------------------------------------------------------------- the stage
def _stage_project(tmp_path: Path) -> Path:
    """A project copy with synthetic shards (3 x 16 pairs), checkpoints every 2 steps, a tokenizer."""
    proj = copy_project(tmp_path / "proj")
    write_data(proj, [16, 16, 16])
    params = yaml.safe_load((proj / "params.yaml").read_text())
    small = small_params(epochs_per_shard=3, batch_size=2, checkpoint_steps=2, logging_steps=2)
    for section in ("tokenizer", "model", "train", "generate"):
        params[section] = small[section]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "stages.model.tokenizer"], proj)
    return proj


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_finishes(tmp_path: Path) -> None:
    proj = _stage_project(tmp_path)
    ckpt = proj / "models" / ".checkpoints" / "qa-t5"
    proc = subprocess.Popen([sys.executable, "-m", "stages.model.train"], cwd=proj, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(int(p.name.split("-")[1]) >= 6 for p in complete_checkpoints(ckpt)):
            assert proc.poll() is None, "training finished (or died) before a checkpoint could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (proj / "models" / "qa-t5").exists()                  # no half-finished model published
    last = int(complete_checkpoints(ckpt)[-1].name.split("-")[1])

    out = run([sys.executable, "-m", "stages.model.train"], proj)
    assert "resuming from" in out.stdout
    metrics = json.loads((proj / "metrics" / "train.json").read_text())
    total = 3 * 3 * 8                                                  # shards x epochs x batches of 2
    assert metrics["steps"] == total
    assert last <= metrics["resumed_from_step"] < total                # resumed, not restarted
    assert len(metrics["val_loss_by_shard"]) == 3 and None not in metrics["val_loss_by_shard"]
    assert not ckpt.exists()                                           # a finished run cleans up
    rows = [line.split("\t") for line in (proj / "dvclive" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()]
    steps = [int(r[rows[0].index("step")]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == total          # curves continue, no repeats

    # The resumed run ends where an uninterrupted one does (same data order, RNG restored).
    fresh = copy_project(tmp_path / "fresh")
    write_data(fresh, [16, 16, 16])
    for name in ("params.yaml",):
        (fresh / name).write_text((proj / name).read_text())
    run([sys.executable, "-m", "stages.model.tokenizer"], fresh)
    run([sys.executable, "-m", "stages.model.train"], fresh)
    uninterrupted = json.loads((fresh / "metrics" / "train.json").read_text())
    assert (uninterrupted["train_loss"], uninterrupted["val_loss"]) == (metrics["train_loss"], metrics["val_loss"])


@pytest.mark.slow
def test_dvc_exp_run_trains_on_the_sample_and_exp_show_lists_metrics(project: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    run(["dvc", "exp", "run", "-S", "train.learning_rate=0.002", "train"], project)   # train and what it needs
    shown = run(["dvc", "exp", "show", "--csv"], project).stdout
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(shown)))
    exp = [r for r in rows if r["Experiment"] and r["rev"] != "workspace"]
    assert exp, shown
    assert float(exp[0]["train.learning_rate"]) == 0.002
    assert float(exp[0]["val_loss"]) > 0 and float(exp[0]["tokens_per_s"]) > 0

    model_dir = project / "models" / "qa-t5"
    assert (model_dir / "model.safetensors").is_file()
    AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert tok.decode(tok("def f():\n    return 1")["input_ids"], skip_special_tokens=True) == "def f():\n    return 1"
    # The model folder carries its special tokens, not the `generate:` params (evaluate's and soqa ask's).
    gen = GenerationConfig.from_pretrained(str(model_dir))
    assert gen.num_beams in (None, 1) and gen.no_repeat_ngram_size in (None, 0) and gen.eos_token_id == tok.eos_token_id
    summary = json.loads((model_dir / "training.json").read_text())
    assert summary["init"] == "scratch" and summary["parameters"] > 0 and summary["train_pairs"] > 0
    card = (model_dir / "README.md").read_text()
    assert "caution: a toy model" in card and "generate:" not in card
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    shards_md5 = next(o["md5"] for o in lock["stages"]["shard"]["outs"] if o["path"] == "data/shards")
    assert shards_md5 in card and "val_loss" in card and "learning_rate: 0.002" in card

    metrics = json.loads((project / "metrics" / "train.json").read_text())
    for key in ("train_loss", "val_loss", "steps", "tokens_seen", "tokens_per_s", "wall_time_s", "device",
                "truncated_target_share"):
        assert metrics[key] is not None, key
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    assert "train_loss" in plots["data"] and "metrics/train_loss.svg" not in plots["data"]   # one chart, shared axes
    assert "train" not in run(["dvc", "status", "train"], project).stdout.replace("'train'", "")
