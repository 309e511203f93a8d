"""Formal-language and MQAR tasks for the engine: batches a pure function of (seed, step), losses only on
answer tokens, evaluation on the fixed test sets."""

import pytest
import torch

from xlram.data.formal import IGNORE_INDEX
from xlram.models.registry import create_model
from xlram.train import BatchIndex
from xlram.train.synthetic_tasks import FormalLanguageTask, MQARTask, answer_features


def _rows(task, step, start, stop, size=8, seed=0):
    return task.batch(BatchIndex(seed=seed, step=step, start=start, stop=stop, size=size))


@pytest.fixture(scope="module")
def parity():
    return FormalLanguageTask("parity", num_test=32, num_val=16, eval_batch_size=16)


@pytest.fixture(scope="module")
def mqar_task():
    return MQARTask("cl64_kv4", num_test=20, num_val=10, eval_batch_size=8)


@pytest.mark.parametrize("name", ["parity", "mqar"])
def test_batches_are_a_pure_function_of_seed_and_step(name, parity, mqar_task):
    task = parity if name == "parity" else mqar_task
    ids, targets = _rows(task, 3, 0, 8)
    again = _rows(task, 3, 0, 8)
    assert torch.equal(ids, again[0]) and torch.equal(targets, again[1])
    assert not torch.equal(ids, _rows(task, 4, 0, 8)[0]) or not torch.equal(targets, _rows(task, 4, 0, 8)[1])
    assert not torch.equal(ids, _rows(task, 3, 0, 8, seed=1)[0])
    halves = [_rows(task, 3, 0, 4), _rows(task, 3, 4, 8)]
    assert torch.equal(torch.cat([h[0] for h in halves]), ids)  # any split of the global batch


def test_formal_batches_answer_once_per_row(parity):
    ids, targets = _rows(parity, 0, 0, 8)
    answers = targets != IGNORE_INDEX
    assert (answers.sum(1) == 1).all()
    n = (ids != 0).sum(1)  # the answer sits at the separator, after n - 1 input symbols
    assert torch.equal(answers.float().argmax(1), n - 1)
    lengths = n - 1
    assert lengths.min() >= 3 and lengths.max() <= 40


def _loss_with_targets_changed_off_answers(task, model, batch):
    ids, targets = batch
    loss, metrics = task.loss(model, (ids, targets))
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    # The logits at non-answer positions must not enter the loss: its gradient w.r.t. them is zero.
    logits, _ = model(ids)
    logits = logits.detach().requires_grad_()
    mask = targets != IGNORE_INDEX
    picked = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    picked.backward()
    assert logits.grad[~mask].abs().max() == 0
    return loss, picked


@pytest.mark.parametrize("model_name", ["lm-xlstm[1:1]-tiny", "lstm", "transformer"])
def test_loss_covers_answer_tokens_only(parity, model_name):
    from benchmarks.synthetic import ModelSpec

    torch.manual_seed(0)
    if model_name.startswith("lm-"):
        model = create_model(model_name, vocab_size=parity.task.vocab_size)
    else:
        model = ModelSpec(model_name, 16, heads=2).build(parity.task.vocab_size)
    batch = _rows(parity, 0, 0, 8)
    loss, reference = _loss_with_targets_changed_off_answers(parity, model, batch)
    assert torch.allclose(loss, reference, atol=1e-5)
    # Changing the inputs after the answer (padding) does not change the loss of a causal model.
    ids, targets = batch
    ids2 = ids.clone()
    after = torch.cumsum((targets != IGNORE_INDEX).long(), 1) > 0
    after &= targets == IGNORE_INDEX
    ids2[after] = 2
    assert torch.allclose(parity.loss(model, (ids2, targets))[0], loss, atol=1e-5)


def test_mqar_loss_projects_answer_positions_only(mqar_task):
    torch.manual_seed(0)
    model = create_model("lm-xlstm[1:0]-tiny", vocab_size=8192)
    ids, targets = _rows(mqar_task, 0, 0, 4)
    assert ((targets != IGNORE_INDEX).sum(1) == 4).all()
    logits, hidden, head = answer_features(model, ids)
    assert logits is None and hidden.shape == (4, 64, 32)
    loss, metrics = mqar_task.loss(model, (ids, targets))
    full, _ = model(ids)
    mask = targets != IGNORE_INDEX
    reference = torch.nn.functional.cross_entropy(full[mask], targets[mask])
    assert torch.allclose(loss, reference, atol=1e-5)


def test_evaluation_reports_raw_scaled_val_and_bins(parity, mqar_task):
    torch.manual_seed(0)
    model = create_model("lm-xlstm[0:1]-tiny", vocab_size=parity.task.vocab_size)
    out = parity.evaluate(model)
    assert set(out) == {"test_accuracy", "test_scaled_accuracy", "val_accuracy"}
    assert out["test_scaled_accuracy"] == pytest.approx((out["test_accuracy"] - 0.5) / 0.5)
    bins = parity.last_eval["bins"]
    assert sum(b["count"] for b in bins) == 32 and bins[0]["lo"] == 40
    model = create_model("lm-xlstm[1:0]-tiny", vocab_size=8192)
    out = mqar_task.evaluate(model)
    assert set(out) == {"accuracy", "test_loss", "val_accuracy"} and 0 <= out["accuracy"] <= 1


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="task name must be one of"):
        FormalLanguageTask("palindrome")
    with pytest.raises(ValueError, match="val_seed must differ"):
        FormalLanguageTask("parity", num_test=4, num_val=4, val_seed=0)
    with pytest.raises(ValueError, match="select must be"):
        FormalLanguageTask("parity", num_test=4, num_val=4, select="best")
    with pytest.raises(ValueError, match="needs a validation set"):
        FormalLanguageTask("parity", num_test=4, select="best_val")
    with pytest.raises(ValueError, match="MQAR preset name"):
        MQARTask("cl32_kv2")
    with pytest.raises(ValueError, match="vocab_size is 64, but MQAR needs 8192"):
        MQARTask("cl64_kv4", num_test=4).check_model(create_model("lm-xlstm[1:0]-tiny"))


def test_best_val_selection_reports_the_best_evaluation_so_far(monkeypatch):
    task = FormalLanguageTask("parity", num_test=8, num_val=4, eval_batch_size=8, select="best_val")
    # Scripted right/wrong answers per read of a set: validation then (when it improves) test.
    script = {"val": [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]],
              "test": [[1] * 2 + [0] * 6, [1] * 5 + [0] * 3, [1] * 8]}
    reads = []

    def scripted(model, data):
        name = "val" if data is task.val_set else "test"
        reads.append(name)
        return torch.tensor(script[name].pop(0), dtype=torch.bool)

    monkeypatch.setattr(task, "_correct", scripted)
    model = torch.nn.Linear(1, 1)
    first = task.evaluate(model)
    assert first["val_accuracy"] == 0.5 and first["test_accuracy"] == 0.25 and first["selected_eval"] == 1
    worse = task.evaluate(model)  # validation 0.25: the first evaluation stays selected, test not read
    assert worse["test_accuracy"] == 0.25 and worse["selected_eval"] == 1
    assert worse["val_accuracy_now"] == 0.25
    tie = task.evaluate(model)  # validation 0.5 again: the later one is taken
    assert tie["test_accuracy"] == 0.625 and tie["selected_eval"] == 3
    best = task.evaluate(model)
    assert best["val_accuracy"] == 1.0 and best["test_accuracy"] == 1.0 and best["selected_eval"] == 4
    assert reads == ["val", "test", "val", "val", "test", "val", "test"]
