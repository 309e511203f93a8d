"""The LM task: data a pure function of (seed, step), any split of the global batch, clear errors."""

import pytest
import torch

from xlram.data.text import ByteCorpus
from xlram.models.registry import create_model
from xlram.train import BatchIndex, LMTask, load_lm_corpus

from .helpers import docs_corpus, lm_task


def _rows(task, step, start, stop, size=8, seed=0):
    return task.batch(BatchIndex(seed=seed, step=step, start=start, stop=stop, size=size))


def test_batches_are_a_pure_function_of_seed_and_step():
    task = lm_task()
    x, y = _rows(task, 5, 0, 8)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
    x_again, _ = _rows(lm_task(), 5, 0, 8)
    assert torch.equal(x, x_again)  # a new task object (a resumed run) draws the same rows
    assert not torch.equal(x, _rows(task, 6, 0, 8)[0])
    assert not torch.equal(x, _rows(task, 5, 0, 8, seed=1)[0])


def test_any_split_of_the_global_batch_gives_its_rows():
    task = lm_task()
    full, _ = _rows(task, 3, 0, 8)
    quarters = torch.cat([_rows(task, 3, i, i + 2)[0] for i in range(0, 8, 2)])
    assert torch.equal(full, quarters)


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = ByteCorpus(name="nothing", train=torch.empty(0, dtype=torch.uint8),
                       val=torch.empty(0, dtype=torch.uint8), source="test")
    with pytest.raises(ValueError, match="corpus 'nothing' is empty"):
        LMTask(empty)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        LMTask(str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("abc" * 5)
    with pytest.raises(ValueError, match="fewer than one window of seq_len \\+ 1 = 33"):
        LMTask(str(tmp_path / "short.txt"), seq_len=32)


def test_corpus_names_and_files(tmp_path):
    with pytest.raises(ValueError, match="'docs', 'code'.*'novels' is neither"):
        load_lm_corpus("novels")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_lm_corpus(str(tmp_path / "latin1.txt"))
    (tmp_path / "t.txt").write_text("x" * 1000)
    corpus = load_lm_corpus(str(tmp_path / "t.txt"))
    assert corpus.train.numel() == 900 and corpus.val.numel() == 100


def test_model_vocabulary_is_checked():
    with pytest.raises(ValueError, match="vocab_size is 64.*need 256"):
        lm_task().check_model(create_model("lm-xlstm[1:0]-tiny"))


def test_evaluate_is_deterministic_and_restores_train_mode():
    task = lm_task()
    assert task.corpus is docs_corpus()
    model = create_model("lm-xlstm[1:0]-tiny", vocab_size=256).train()
    a, b = task.evaluate(model), task.evaluate(model)
    assert a == b and a["val_bpb"] > 0 and model.training
