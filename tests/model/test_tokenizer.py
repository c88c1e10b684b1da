"""The learned tokenizer: T5 special ids, exact round-trips of code, a loadable transformers folder."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.core.errors import StageError
from stages.core.schemas import PAIR_SCHEMA
from stages.model.tokenizer import SPACE, learn_tokenizer, to_transformers

SNIPPETS = [
    "def f(x):\n    if x:\n        return [i ** 2 for i in range(x)]\n    return None\n",
    "class A:\n\tdef m(self):\n\t\tpass\n\n\n# two blank lines above, trailing spaces here:   \n",
    "```\nimport numpy as np\na = np.array([1, 2, 3])  # aligned   comment\nprint(a[::-1])\n```",
    "    leading indentation, then {braces} ~tilde^ `backticks` and a lambda: (lambda: 0)()",
    "Use `x.sort()` — it’s in place. Noms: é, 中文, emoji 😀, math ∑.\r\nCRLF line",
    "x  =  1 ; y=2\n \n\t \n",
]

CORPUS = [s * 3 for s in SNIPPETS] + [
    "How do I sort a dict by value?\n\nUse sorted(d.items(), key=lambda kv: kv[1]).",
    "for i in range(10):\n    print(i)\n    if i % 2:\n        continue\n",
] * 20


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory) -> object:
    """The learned tokenizer saved as a folder and loaded back through AutoTokenizer."""
    from transformers import AutoTokenizer

    tok = learn_tokenizer(CORPUS, vocab_size=600)
    folder = tmp_path_factory.mktemp("tok")
    to_transformers(tok, model_max_length=512).save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def test_t5_special_ids_and_eos(hf_tokenizer) -> None:
    assert (hf_tokenizer.pad_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.unk_token_id) == (0, 1, 2)
    assert hf_tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    ids = hf_tokenizer("print(1)")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1
    assert len(hf_tokenizer) <= 600


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_code_round_trips(hf_tokenizer, snippet: str) -> None:
    ids = hf_tokenizer(snippet)["input_ids"]
    assert hf_tokenizer.unk_token_id not in ids          # unseen characters fall back to bytes
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == snippet


def test_indentation_is_learned_as_pieces(hf_tokenizer) -> None:
    # A newline with its indentation is one pre-token, so frequent indents become single pieces.
    tokens = hf_tokenizer.tokenize("for i in x:\n    print(i)")
    assert f"\n{SPACE * 4}" in tokens


def test_folder_is_a_fast_tokenizer_not_t5tokenizer(hf_tokenizer, tmp_path: Path) -> None:
    hf_tokenizer.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # T5Tokenizer would rebuild its own whitespace-collapsing pipeline from a vocab file.
    assert "T5" not in config.get("tokenizer_class", "")
    assert config["clean_up_tokenization_spaces"] is False


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=SPACE, exclude_categories=("Cs",)),
                max_size=80).map(lambda s: unicodedata.normalize("NFC", s))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_any_nfc_text_round_trips(hf_tokenizer, text: str) -> None:
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert hf_tokenizer.decode(ids) == text


def test_learning_is_deterministic() -> None:
    # The trainer's float sums and its hash-set order vary run to run; the saved tokenizer must not.
    assert len({learn_tokenizer(CORPUS, vocab_size=600).to_str() for _ in range(3)}) == 1


def test_too_small_vocabulary_is_a_clear_error() -> None:
    with pytest.raises(StageError, match="vocab_size"):
        learn_tokenizer(CORPUS, vocab_size=300)


def test_stage_learns_from_train_split(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from stages.model import tokenizer as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "split").mkdir(parents=True)
    n = 40
    table = pa.table({
        "question_id": list(range(n)), "answer_id": list(range(100, 100 + n)), "answer_rank": [1] * n,
        "title": [f"How to loop {i}?" for i in range(n)], "question": ["I tried:\n\n```\nfor x in y: pass\n```"] * n,
        "answer": [SNIPPETS[i % len(SNIPPETS)] for i in range(n)], "question_score": [1] * n, "answer_score": [3] * n,
    }, schema=PAIR_SCHEMA)
    pq.write_table(table, tmp_path / "data" / "split" / "train.parquet")
    (tmp_path / "params.yaml").write_text("tokenizer:\n  vocab_size: 700\nmodel:\n  max_source_length: 128\n")
    stage.main()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "data" / "tokenizer"))
    assert tok.model_max_length == 128
    assert tok.decode(tok(SNIPPETS[0])["input_ids"], skip_special_tokens=True) == SNIPPETS[0]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]   # no temporaries left
