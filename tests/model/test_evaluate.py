"""Evaluate stage: the local ROUGE module against rouge-score, the repetition metrics on crafted
loops, masked teacher-forced loss, batched generation, the initial model, and the stage end to end
(in-process on a tiny trained T5, and under real DVC on the sample)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from conftest import REPO, run
from stages.core.errors import StageError
from stages.model import evaluate as ev
from stages.model.prompt import format_source
from tiny_t5 import PAIRS, build_tiny_t5, one_torch_thread

# (prediction, reference): prose, code, punctuation, empty, multi-line, unicode.
KNOWN_PAIRS = [
    ("use pip install numpy", "pip install numpy"),
    ("A tuple is immutable, a list is not.", "Lists are mutable. Tuples are immutable."),
    ("Use `os.remove(path)`.\n\n```\nimport os\nos.remove('a.txt')\n```", "```\nimport os\nos.remove(path)\n```"),
    ("", "some reference text"),
    ("the the the the the", "the cat sat on the mat"),
    ("Données: naïve café. Done!", "café naïve données"),
    ("First line.\nSecond line? Third one! Fourth", "Fourth. Third one! First line."),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def rouge():
    return ev.load_rouge()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny") / "qa-t5")


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    return ev.load_trained(tiny_model)


# ----------------------------------------------------------------------------- ROUGE
def test_rouge_module_equals_rouge_score_per_pair(rouge) -> None:
    preds, refs = zip(*KNOWN_PAIRS)
    ours = rouge.compute(predictions=list(preds), references=list(refs), use_aggregator=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    rouge_mod = __import__(type(rouge).__module__, fromlist=["lsum_text"])
    for i, (pred, ref) in enumerate(KNOWN_PAIRS):
        direct = scorer.score(ref, pred)
        for t in ("rouge1", "rouge2", "rougeL"):
            assert ours[t][i] == pytest.approx(direct[t].fmeasure, abs=1e-12), (t, pred, ref)
        # Lsum: rouge-score on the same texts with one sentence a line.
        lsum = scorer.score(rouge_mod.lsum_text(ref), rouge_mod.lsum_text(pred))["rougeLsum"].fmeasure
        assert ours["rougeLsum"][i] == pytest.approx(lsum, abs=1e-12)
    mean = rouge.compute(predictions=list(preds), references=list(refs))
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert mean[t] == pytest.approx(float(np.mean(ours[t])), abs=1e-12)


def test_rouge_known_values(rouge) -> None:
    # 3 of 4 predicted words match, all 3 reference words found: F1 = 2 * .75 * 1 / 1.75.
    r = rouge.compute(predictions=["use pip install numpy"], references=["pip install numpy"])
    assert r["rouge1"] == pytest.approx(6 / 7)
    assert r["rouge2"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    same = rouge.compute(predictions=["x = [1, 2]"], references=["x = [1, 2]"])
    assert all(v == pytest.approx(1.0) for v in same.values())
    none = rouge.compute(predictions=["alpha beta"], references=["gamma delta"])
    assert all(v == 0.0 for v in none.values())
    # Several references: the best one counts.
    multi = rouge.compute(predictions=["pip install numpy"], references=[["conda install numpy", "pip install numpy"]])
    assert multi["rouge1"] == pytest.approx(1.0)
    # Deterministic (no bootstrap resampling): the same call gives the same numbers.
    preds, refs = zip(*KNOWN_PAIRS)
    assert rouge.compute(predictions=list(preds), references=list(refs)) == \
        rouge.compute(predictions=list(preds), references=list(refs))


def test_rouge_lsum_splits_sentences_without_nltk(rouge) -> None:
    # Same sentences, swapped order: one long LCS is cut in half, the summary-level LCS is not.
    r = rouge.compute(predictions=["d e f. a b c."], references=["a b c. d e f."])
    assert r["rougeL"] == pytest.approx(0.5)
    assert r["rougeLsum"] == pytest.approx(1.0)
    mod = __import__(type(rouge).__module__, fromlist=["split_sentences"])
    assert mod.split_sentences('Hi there. Use os.path.join("a", "b")! Ok?\n\n```\nx = 1\n```') == [
        "Hi there.", 'Use os.path.join("a", "b")!', "Ok?", "```", "x = 1", "```"]
    assert mod.split_sentences('He said "stop." Then (really.) left') == ['He said "stop."', "Then (really.)", "left"]


def test_rouge_rejects_unknown_type(rouge) -> None:
    with pytest.raises(ValueError, match="unknown rouge types"):
        rouge.compute(predictions=["a"], references=["a"], rouge_types=["rougeX"])


# ----------------------------------------------------------------------------- repetition
def test_repetition_on_crafted_loops() -> None:
    loop = "You can use a list. You can use a list. You can use a list."
    assert ev.is_repetitive(loop)
    assert ev.is_repetitive("the the the the the the")          # one word, 3 overlapping 4-grams
    assert ev.is_repetitive("To install To install To install To install")
    assert not ev.is_repetitive("You can use a list. You can use a list.")   # twice is not a loop
    assert not ev.is_repetitive("Use pip:\n\n```\npip install numpy\n```\n\nthen import numpy as np")
    assert not ev.is_repetitive("")
    assert ev.is_repetitive("Use A List use a list USE A LIST use a")   # case folded
    texts = [loop, "pip install numpy", "a tuple is immutable", "x x x x x x"]
    assert ev.repetition_rate(texts) == 0.5
    assert ev.repetition_rate([]) == 0.0


@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=5), min_size=4, max_size=8))
@settings(max_examples=50, deadline=None)
def test_any_phrase_said_three_times_is_a_loop(words: list[str]) -> None:
    phrase = " ".join(words)
    assert ev.is_repetitive(" ".join([phrase] * 3))


def test_empty_rate_sees_whitespace_loops() -> None:
    texts = ["\n" * 200, "   \n\n    \n", "pip install numpy", "x"]
    assert ev.empty_rate(texts) == 0.5
    assert ev.repetition_rate(texts) == 0.0      # no words, no word 4-grams: why empty_rate exists
    assert ev.empty_rate([]) == 0.0


def test_distinct_2() -> None:
    assert ev.distinct_n(["a b a b"]) == pytest.approx(2 / 3)      # (a b) (b a) (a b)
    assert ev.distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)   # bigrams pooled over all texts
    assert ev.distinct_n(["x x x x x"]) == pytest.approx(1 / 4)
    assert ev.distinct_n(["one"]) == 0.0


# ----------------------------------------------------------------------------- model work
def test_batched_generation_keeps_input_order(loaded) -> None:
    model, tok = loaded
    # Inputs of different lengths, repeated and shuffled: batches are length-sorted internally,
    # and every answer must still come back at its question's position.
    questions = [q for _ in range(3) for q in PAIRS]
    questions = [questions[i] for i in np.random.default_rng(0).permutation(len(questions))]
    ids = tok([format_source(q, None, include_body=False) for q in questions])["input_ids"]
    for beams in (1, 2):
        cfg = ev.generation_config(model, {"max_new_tokens": 48, "num_beams": beams})
        batched = ev.generate_ids(model, ids, cfg, batch_size=4, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
        texts = tok.batch_decode(batched.sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert texts == [PAIRS[q] for q in questions]
        # Lengths are the answers' own (EOS and batch padding cut off).
        assert batched.lengths.tolist() == [len(tok(text_target=PAIRS[q])["input_ids"]) - 1 for q in questions]
    single = [ev.generate_ids(model, [x], cfg, 1, tok.pad_token_id, tok.eos_token_id).sequences[0] for x in ids[:3]]
    assert single == batched.sequences[:3]
    # A limit below the answer length cuts every answer at exactly max_new_tokens.
    short = ev.generate_ids(model, ids, ev.generation_config(model, {"max_new_tokens": 5}), 4,
                            tok.pad_token_id, tok.eos_token_id)
    assert short.lengths.tolist() == [5] * len(ids)


def test_teacher_forced_loss_masks_padding(loaded) -> None:
    import torch

    model, tok = loaded
    src = tok([format_source(q, None, include_body=False) for q in PAIRS])["input_ids"]
    answers = ["short", "a much longer answer, with many more tokens than the first one", "mid size"]
    tgt = tok(text_target=answers)["input_ids"]
    together = ev.teacher_forced_loss(model, src, tgt, batch_size=3, pad_id=tok.pad_token_id)
    alone = np.vstack([ev.teacher_forced_loss(model, [s], [t], 1, tok.pad_token_id) for s, t in zip(src, tgt)])
    np.testing.assert_allclose(together, alone, rtol=1e-4)
    assert together[:, 1].tolist() == [len(t) for t in tgt]   # tokens counted: the labels, no padding
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([src[1]]), labels=torch.tensor([tgt[1]])).loss.item()
    assert together[1, 0] / together[1, 1] == pytest.approx(ref, rel=1e-4)


def test_select_examples_is_a_stable_sample() -> None:
    test = pd.DataFrame({"question_id": range(100), "answer_id": range(1000, 1100), "title": "t"})
    picked = ev.select_examples(test, 10)
    shuffled = ev.select_examples(test.sample(frac=1, random_state=1), 10)
    assert len(picked) == 10
    assert sorted(picked["answer_id"]) == sorted(shuffled["answer_id"])
    assert picked["question_id"].max() > 20          # a sample of the split, not its first rows
    assert len(ev.select_examples(test, None)) == 100 and len(ev.select_examples(test, 500)) == 100


def test_generation_config_from_params(loaded) -> None:
    model, _ = loaded
    cfg = ev.generation_config(model, {"max_new_tokens": 256, "num_beams": 4, "no_repeat_ngram_size": 3,
                                       "repetition_penalty": 1.3})
    assert (cfg.max_new_tokens, cfg.num_beams, cfg.no_repeat_ngram_size, cfg.repetition_penalty) == (256, 4, 3, 1.3)
    assert cfg.max_length is None and cfg.do_sample is False
    with pytest.raises(StageError, match="unknown keys"):
        ev.generation_config(model, {"max_length": 20})
    import torch

    assert ev.batch_size("auto") == (256 if torch.cuda.is_available() else 32) and ev.batch_size(7) == 7


def test_initial_scratch_model_is_the_train_stage_step_0(tmp_path: Path, shared: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from stages.model.modeling import build_scratch_model

    tok = AutoTokenizer.from_pretrained(str(shared / "models" / "flan-t5-small-tokenizer"))
    trained = build_scratch_model("tiny", tok, seed=7)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)                  # "training" moved every weight
    trained.save_pretrained(str(tmp_path / "qa-t5"))
    params = {"model": {"init": "scratch", "preset": "tiny"}, "train": {"seed": 7}}
    initial, desc = ev.load_initial(params, tok, tmp_path / "qa-t5")
    start = build_scratch_model("tiny", tok, seed=7).state_dict()
    assert all(torch.equal(v, start[k]) for k, v in initial.state_dict().items())
    assert "seed 7" in desc and "untrained" in desc
    with pytest.raises(StageError, match="does not build the shape"):
        ev.load_initial({"model": {"init": "scratch", "preset": "t5-small"}, "train": {"seed": 7}}, tok,
                        tmp_path / "qa-t5")


def test_close_fences_and_questions_file(tmp_path: Path) -> None:
    assert ev.close_fences("a\n```\nx = 1") == "a\n```\nx = 1\n```"
    assert ev.close_fences("```\nx\n```") == "```\nx\n```"
    # human_eval.md: prose blank-line runs collapse, code keeps its blank lines, open fences close.
    assert ev.markdown_answer("a  \n\n\n\n\nb\n```\nx\n\n\n\ny") == "a\n\nb\n```\nx\n\n\n\ny\n```"
    assert ev.markdown_answer(" \n\n \n") == "*(empty answer)*"
    qs = ev.read_questions(REPO / "data" / "human_eval" / "questions.txt")
    assert qs == ["What is the difference between list and tuple?", "How to create a new text file in Python?",
                  "How to install Numpy?", "How to add 2 lists together?",
                  "How to remove a specific element from a list in Python?",
                  "How to find the index of an element in a list in Python?"]
    (tmp_path / "q.txt").write_text("# only a comment\n\n")
    with pytest.raises(StageError, match="holds no questions"):
        ev.read_questions(tmp_path / "q.txt")


# ----------------------------------------------------------------------------- the stage
def _stage_dir(root: Path, trained: Path, initial: Path, max_examples: int | None) -> Path:
    """A working directory holding what the evaluate stage reads: model, test split, questions, params."""
    import shutil

    shutil.copytree(trained, root / "models" / "qa-t5")
    (root / "data" / "split").mkdir(parents=True)
    (root / "data" / "human_eval").mkdir(parents=True)
    (root / "data" / "human_eval" / "questions.txt").write_text(
        "# two of the seed's questions\nHow to install Numpy?\n\nWhat is the difference between list and tuple?\n")
    n = len(PAIRS)
    pd.DataFrame({"question_id": np.arange(n, dtype="int64") + 10, "answer_id": np.arange(n, dtype="int64") + 100,
                  "answer_rank": np.ones(n, dtype="int32"), "title": list(PAIRS), "question": [""] * n,
                  "answer": list(PAIRS.values()), "question_score": np.ones(n, dtype="int64"),
                  "answer_score": np.ones(n, dtype="int64")}).to_parquet(root / "data" / "split" / "test.parquet")
    params = {"model": {"init": str(initial), "include_body": True, "max_source_length": 128, "max_target_length": 64},
              "train": {"seed": 0},
              "generate": {"max_new_tokens": 40, "num_beams": 2, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0},
              "evaluate": {"max_examples": max_examples, "batch_size": 2, "initial_model": True, "cpu_threads": "auto"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.slow
def test_stage_scores_a_trained_model_against_its_initial_one(tmp_path: Path, tiny_model: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # The "initial" checkpoint: the tiny model's shape, untrained (a pretrained-style folder).
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    untrained = AutoModelForSeq2SeqLM.from_config(AutoModelForSeq2SeqLM.from_pretrained(str(tiny_model)).config)
    untrained.save_pretrained(str(tmp_path / "initial"))
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(str(tmp_path / "initial"))
    initial = tmp_path / "initial"

    work = _stage_dir(tmp_path / "work", tiny_model, initial, max_examples=None)
    monkeypatch.chdir(work)
    result = ev.run(ev.load_params())

    metrics = json.loads((work / "metrics" / "eval.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    # The model learned these answers: perfect ROUGE, near-zero loss; the initial model did not.
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert metrics[t] == pytest.approx(1.0), t
        assert metrics["initial"][t] < 0.5
    assert metrics["test_loss"] < 0.1 < metrics["initial"]["test_loss"]
    assert metrics["examples"] == metrics["test_pairs"] == 3 and metrics["max_examples"] is None
    assert metrics["repetition_rate"] == 0.0 and 0 < metrics["distinct_2"] <= 1 and metrics["empty_rate"] == 0.0
    assert 0 < metrics["gen_len"] < 40 and metrics["hit_max_new_tokens"] == 0.0
    assert set(metrics["reference"]) == {"len", "repetition_rate", "distinct_2"}

    pred = pd.read_parquet(work / "data" / "eval" / "predictions.parquet")
    assert pred["prediction"].tolist() == pred["reference"].tolist() == list(PAIRS.values())
    assert pred["question_id"].tolist() == [10, 11, 12]
    assert (pred["rouge1"] == 1.0).all() and pred["initial_prediction"].notna().all()
    assert pred["gen_tokens"].mean() == pytest.approx(metrics["gen_len"], abs=1e-3)

    md = (work / "metrics" / "human_eval.md").read_text()
    assert re.findall(r"^## \d\. (.+)$", md, flags=re.M) == ["How to install Numpy?",
                                                             "What is the difference between list and tuple?"]
    numpy_section = md.split("## 1. How to install Numpy?")[1].split("<details>")[0]
    assert PAIRS["How to install Numpy?"] in numpy_section
    assert md.count("<details>") == 2 and "pretrained" in md
    # A toy model (a tiny T5, no train-stage summary: its size alone decides) answers under a caution.
    assert re.search(r"^> \*\*Caution: a toy model \([\d,]+ parameters, training unknown\)", md, flags=re.M), md
    answers = json.loads((work / "data" / "eval" / "human_eval.json").read_text())
    assert answers["caution"].startswith("caution: a toy model") and answers["settings"]["num_beams"] == 2
    assert [a["question"] for a in answers["answers"]] == ["How to install Numpy?",
                                                           "What is the difference between list and tuple?"]
    assert not [p for p in work.rglob("*") if ".tmp-" in p.name]

    # Same inputs, same outputs: the metrics and the answers do not drift between runs.
    ev.run(ev.load_params())
    assert json.loads((work / "metrics" / "eval.json").read_text()) == metrics
    assert (work / "metrics" / "human_eval.md").read_text() == md


def test_stage_cap_is_recorded_and_missing_model_is_a_clear_error(tmp_path: Path, tiny_model: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    work = _stage_dir(tmp_path / "work", tiny_model, tiny_model, max_examples=2)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["initial_model"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)
    metrics = ev.run(ev.load_params())
    assert metrics["examples"] == 2 and metrics["max_examples"] == 2 and metrics["test_pairs"] == 3
    assert "initial" not in metrics
    assert len(pd.read_parquet("data/eval/predictions.parquet")) == 2

    import shutil

    shutil.rmtree(work / "models" / "qa-t5")
    proc = run(["python", "-m", "stages.model.evaluate"], work, check=False)
    assert proc.returncode == 1
    assert "no trained model at models/qa-t5" in proc.stderr and "dvc repro" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_dvc_repro_writes_eval_metrics_and_human_eval(project: Path) -> None:
    first = run(["dvc", "repro", "evaluate"], project, timeout=1500)
    assert "Running stage 'evaluate'" in first.stdout
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "test_loss", "repetition_rate", "distinct_2"):
        assert 0 <= metrics[key] and 0 <= metrics["initial"][key], key
    assert metrics["test_loss"] < metrics["initial"]["test_loss"]       # training lowered the test loss
    assert metrics["examples"] == metrics["test_pairs"] > 0
    md = (project / "metrics" / "human_eval.md").read_text()
    assert len(re.findall(r"^## \d\. ", md, flags=re.M)) == 6
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    eval_metrics = next(v["data"]["metrics/eval.json"]["data"] for v in shown.values())
    assert eval_metrics["rouge1"] == metrics["rouge1"]

    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], project)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "evaluated"], project)
    assert "evaluate" not in run(["dvc", "status", "evaluate"], project).stdout.replace("'evaluate'", "")

    # A cap on the test pairs reruns evaluate only (not train), and the diff shows it.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["max_examples"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run(["dvc", "repro", "evaluate"], project)
    assert re.findall(r"Running stage '([^']+)'", rerun.stdout) == ["evaluate"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)["metrics/eval.json"]
    assert diff["examples"]["new"] == 3 and diff["max_examples"]["new"] == 3

    # Generation settings are evaluate's alone: a new beam width reruns evaluate, never train.
    md = (project / "metrics" / "human_eval.md").read_text()
    assert "\ufffd" not in md and re.search(r"Caution: a toy model \([\d,]+ parameters, trained from scratch "
                                             r"\(preset tiny\) on \d+ question-answer pairs\)", md), md[:600]
    params["generate"]["num_beams"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "train", "evaluate"], project).stdout
    assert "evaluate:" in status and "generate" in status and "train:" not in status, status
    dry = run(["dvc", "repro", "--dry", "evaluate"], project).stdout
    assert re.findall(r"Running stage '([^']+)'", dry) == ["evaluate"], dry


def test_undecodable_byte_pieces_are_dropped_not_shown_as_replacement_chars(loaded) -> None:
    _, tok = loaded
    lone = tok.convert_tokens_to_ids("<0xE2>")              # the first byte of a 3-byte character, alone
    euro = [tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "€".encode()]
    words = tok("pip install numpy", add_special_tokens=False)["input_ids"]
    assert lone != tok.unk_token_id and "\ufffd" in tok.decode(words + [lone])   # what the seed printed
    assert ev.decode_answers(tok, [words + [lone], euro + words, [lone, lone]]) == [
        "pip install numpy", "€pip install numpy", ""]
