"""The "english" corpus (the Linux kernel documentation of Debian's linux-doc-6.1): files read, split, errors.

Most tests read a tiny fake Documentation folder through XLRAM_ENGLISH_ROOT; the last one reads the
installed package and is skipped where it is absent.
"""

import gzip

import pytest
import torch

from xlram.data.text import (
    ENGLISH_PACKAGE,
    ENGLISH_ROOT,
    ENGLISH_ROOT_ENV,
    decode,
    english_documents,
    is_val_document,
    load_corpus,
)
from xlram.train.tasks import LMTask


def _doc(i: int) -> str:
    return f"Document number {i} says: the kernel schedules tasks, and this is line {i}.\n" * 3


@pytest.fixture
def fake_docs(tmp_path, monkeypatch):
    """A Documentation folder with 60 documents (plain and gzipped) and files that must be left out."""
    root = tmp_path / "Documentation"
    for i in range(60):
        folder = root / f"area{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            (folder / f"doc{i}.rst.gz").write_bytes(gzip.compress(_doc(i).encode()))
        else:
            (folder / f"doc{i}.txt").write_text(_doc(i))
    for skipped in ("translations/zh_CN/index.rst", "devicetree/bindings/x.txt", "area0/conf.py",
                    "area0/logo.svg"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("SKIPPED " * 10)
    monkeypatch.setenv(ENGLISH_ROOT_ENV, str(root))
    return root


def test_documents_are_read_sorted_and_filtered(fake_docs):
    docs = english_documents()
    paths = [p for p, _ in docs]
    assert len(docs) == 60 and paths == sorted(paths)
    assert "area1/doc1.rst" in paths and "area0/doc0.txt" in paths  # .gz dropped from the name
    assert all("SKIPPED" not in text for _, text in docs)
    assert dict(docs)["area1/doc1.rst"] == _doc(1)


def test_split_is_by_document_deterministic_and_disjoint(fake_docs):
    corpus = load_corpus("english")
    train, val = decode(corpus.train), decode(corpus.val)
    assert corpus.name == "english" and corpus.val.numel() > 0 and corpus.train.numel() > 0
    for path, text in english_documents():
        in_val = is_val_document(path)
        assert (text in val) == in_val and (text in train) == (not in_val), path
    again = load_corpus("english")
    assert torch.equal(again.train, corpus.train) and torch.equal(again.val, corpus.val)
    assert "sha256" in corpus.source and "60 documents" in corpus.source


def test_val_documents_are_about_a_tenth_and_fixed_by_path():
    paths = [f"dir{i % 7}/file{i}.rst" for i in range(2000)]
    share = sum(map(is_val_document, paths)) / len(paths)
    assert 0.08 < share < 0.12
    assert [is_val_document(p) for p in paths[:50]] == [is_val_document(p) for p in paths[:50]]
    assert sum(is_val_document(p, 4) for p in paths) / len(paths) > 0.2  # val_every is honoured


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ENGLISH_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=f"apt-get install -y --no-install-recommends {ENGLISH_PACKAGE}"):
        load_corpus("english")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(ENGLISH_ROOT_ENV, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no .rst or .txt document"):
        load_corpus("english")


def test_lm_task_trains_on_the_corpus_by_name(fake_docs):
    task = LMTask("english", seq_len=16, eval_windows=2)
    assert task.config()["corpus"] == "english" and task.val is not None


@pytest.mark.skipif(not ENGLISH_ROOT.is_dir(), reason=f"Debian package {ENGLISH_PACKAGE} not installed")
def test_installed_package_gives_ten_megabytes_of_english(monkeypatch):
    monkeypatch.delenv(ENGLISH_ROOT_ENV, raising=False)
    corpus = load_corpus("english")
    total = corpus.train.numel() + corpus.val.numel()
    assert total > 10_000_000 and corpus.val.numel() > 1_000_000
    assert 0.05 < corpus.val.numel() / total < 0.15
    text = decode(corpus.val[:200_000])
    assert text.count(" the ") > 1000
    assert ENGLISH_PACKAGE in corpus.source
