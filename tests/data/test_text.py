"""Byte corpora from the CPython installation: split, encoding and the seeded window sampler."""

import pytest
import torch

from xlram.data.text import VOCAB_SIZE, WindowSampler, decode, encode, eval_windows, load_corpus


@pytest.fixture(scope="module")
def docs():
    return load_corpus("docs")


def test_docs_corpus_is_english_prose_with_a_fixed_split(docs):
    assert docs.train.dtype == torch.uint8 and docs.vocab_size == VOCAB_SIZE == 256
    assert docs.train.numel() > 200_000 and docs.val.numel() > 20_000
    assert 0.05 < docs.val.numel() / (docs.train.numel() + docs.val.numel()) < 0.15
    assert " the " in decode(docs.train[:20_000]) and " the " in decode(docs.val[:20_000])
    again = load_corpus("docs")
    assert torch.equal(again.train, docs.train) and torch.equal(again.val, docs.val)


def test_code_corpus_is_python_source():
    code = load_corpus("code")
    assert code.train.numel() > 1_000_000
    text = decode(code.val[:50_000])
    assert "def " in text and "import " in text


def test_encode_decode_round_trip():
    text = "naïve café — λ"
    ids = encode(text)
    assert ids.dtype == torch.uint8 and ids.numel() == len(text.encode())
    assert decode(ids) == text and decode(ids.tolist()) == text
    assert decode([0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, never raises


def test_window_sampler_is_seeded_and_shifts_targets(docs):
    a = WindowSampler(docs.train, 4, 32, seed=1)
    b = WindowSampler(docs.train, 4, 32, seed=1)
    x, y = a()
    x2, y2 = b()
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(a()[0], x)  # the next batch is a different one
    assert not torch.equal(WindowSampler(docs.train, 4, 32, seed=2)()[0], x)


def test_eval_windows_are_fixed(docs):
    x, y = eval_windows(docs.val, 64, 10)
    assert x.shape == (10, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(eval_windows(docs.val, 64, 10)[0], x)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="corpus name"):
        load_corpus("wiki")
    with pytest.raises(ValueError, match="seq_len"):
        WindowSampler(torch.zeros(100, dtype=torch.uint8), 2, 0)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        WindowSampler(torch.zeros(10, dtype=torch.uint8), 2, 10)
