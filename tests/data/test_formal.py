"""Formal-language tasks: exact answers, layout, lengths, determinism, chance levels and bad arguments."""

import random

import pytest
import torch

from xlram.data import formal
from xlram.data.formal import (
    END,
    IGNORE_INDEX,
    PAD_ID,
    SEP_ID,
    TASKS,
    answer_metrics,
    batches,
    fixed_set,
    get_task,
    scaled_accuracy,
    split_lengths,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_batch(task, batch, min_len, max_len, teacher_forcing=False):
    """Every row: input length in range, the layout of the module docstring, targets == solve(input)."""
    B, S = batch.ids.shape
    assert batch.ids.dtype == batch.targets.dtype == batch.lengths.dtype == torch.long
    assert batch.targets.shape == (B, S) and batch.lengths.shape == batch.num_tokens.shape == (B,)
    assert int(batch.num_tokens.max()) <= S
    for b in range(B):
        n, t = int(batch.lengths[b]), int(batch.num_tokens[b])
        ids, targets = batch.ids[b].tolist(), batch.targets[b].tolist()
        sequence = task.input_of(batch.ids[b])
        assert len(sequence) == n and min_len <= n <= max_len and task.length_ok(n)
        answer = task.encode(task.answer_tokens(sequence))  # solve(...), plus <end> where the task has one
        assert t == n + len(answer)
        assert ids[n] == SEP_ID and SEP_ID not in ids[:n]
        assert targets[:n] == [IGNORE_INDEX] * n  # masked except the answer tokens
        assert targets[n:t] == answer
        assert targets[t:] == [IGNORE_INDEX] * (S - t) and ids[t:] == [PAD_ID] * (S - t)
        slots = answer[:-1] if teacher_forcing else [PAD_ID] * (len(answer) - 1)
        assert ids[n + 1 : t] == slots


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_answer_equals_solve_at_train_lengths(name):
    task = get_task(name)
    batch = task.sample(96, 3, 40, gen(1))
    check_batch(task, batch, 3, 40)
    assert batch.ids.max() < task.vocab_size and batch.targets.max() < task.vocab_size
    if not task.multi_token:
        assert batch.num_answers == 96


@pytest.mark.parametrize("name", ["parity", "modular_arithmetic", "missing_duplicate", "stack_manipulation",
                                  "reverse_string"])
def test_test_split_lengths_and_teacher_forcing(name):
    task = get_task(name)
    lo, hi = split_lengths("test")
    check_batch(task, task.sample(16, lo, hi, gen(2)), lo, hi)
    check_batch(task, task.sample(8, lo, hi, gen(3), teacher_forcing=True), lo, hi, teacher_forcing=True)


def test_lengths_cover_the_range_uniformly():
    lengths = get_task("parity").sample(2000, 3, 40, gen(4)).lengths
    assert int(lengths.min()) == 3 and int(lengths.max()) == 40
    counts = torch.bincount(lengths, minlength=41)[3:]
    assert counts.min() > 20  # 38 lengths, about 53 each
    odd = get_task("modular_arithmetic").sample(500, 3, 40, gen(4)).lengths
    assert bool((odd % 2 == 1).all()) and int(odd.min()) == 3 and int(odd.max()) == 39
    even = get_task("missing_duplicate").sample(500, 3, 40, gen(4)).lengths
    assert bool((even % 2 == 0).all()) and int(even.min()) == 4 and int(even.max()) == 40


def test_solve_on_the_papers_examples():
    seq = lambda s: s.split()
    assert get_task("parity").solve(seq("1 0 1 1")) == "1" and get_task("parity").solve(seq("1 1")) == "0"
    even_pairs = get_task("even_pairs")
    assert even_pairs.solve(list("001110")) == "0"  # one 01 and one 10 (Delétang's example)
    assert even_pairs.solve(list("0101001")) == "1"  # two 10 and three 01
    assert even_pairs.solve(["1"]) == "0"
    cycle = get_task("cycle_navigation")
    assert cycle.solve(seq("+1 -1 0 -1 -1")) == "@3"  # -2 mod 5 (Delétang's example)
    assert cycle.solve(seq("+1 +1 +1 -1")) == "@2"
    arith = get_task("modular_arithmetic")
    assert arith.solve(seq("1 + 2 * 3")) == "2"  # Delétang's examples, mod 5
    assert arith.solve(seq("1 - 1 - 1")) == "4"
    assert arith.solve(seq("0 * 1 + 4 * 3 - 2")) == "0"
    assert arith.solve(seq("1 - 2 * 3")) == "0" and arith.solve(["3"]) == "3"
    majority = get_task("majority")
    assert majority.solve(seq("5 9 9 5 2")) == "5"  # tie between 5 and 9: the smaller symbol
    assert majority.solve(seq("7 3 7")) == "7"
    assert get_task("majority_count").solve(seq("5 9 9 5 9 2")) == "3"
    assert get_task("majority_count").solve(["1"] * 70) == "63"  # capped at the largest count symbol
    assert get_task("bucket_sort").solve(seq("3 1 2 1")) == ("1", "1", "2", "3")
    assert get_task("reverse_string").solve(seq("1 2 3")) == ("3", "2", "1")
    assert get_task("repetition").solve(seq("1 2 3")) == ("1", "2", "3")
    assert get_task("odds_first").solve(list("00110101")) == tuple("01000111")  # Delétang's docstring
    assert get_task("missing_duplicate").solve(list("01100_10")) == "1"
    stack = get_task("stack_manipulation")
    # Delétang's examples: the stack bottom-to-top, then actions; the answer top-to-bottom.
    assert stack.solve(seq("0 1 1 0 push1 pop pop")) == ("1", "1", "0")
    assert stack.solve(seq("1 1 0 pop pop pop")) == ()
    assert stack.answer_tokens(seq("1 1 0 pop pop pop")) == (END,)
    assert stack.solve(seq("2 pop pop push3 push1")) == ("1", "3")
    assert get_task("set").solve(seq("4 2 4 7 2")) == ("4", "2", "7")


def test_regular_answers_match_independent_formulas():
    rng = random.Random(0)
    arith, even_pairs, cycle = (get_task(n) for n in ("modular_arithmetic", "even_pairs", "cycle_navigation"))
    for _ in range(300):
        expression = arith._draw(2 * rng.randint(0, 20) + 1, rng)
        assert arith.solve(expression) == str(eval(" ".join(expression)) % 5)  # Python's precedence
        bits = even_pairs._draw(rng.randint(1, 50), rng)
        assert even_pairs.solve(bits) == str(int(bits[0] != bits[-1]))
        moves = cycle._draw(rng.randint(1, 50), rng)
        position = 0
        for m in moves:
            position = (position + {"-1": 4, "0": 0, "+1": 1}[m]) % 5
        assert cycle.solve(moves) == f"@{position}"


def test_solve_rejects_inputs_outside_the_task():
    with pytest.raises(ValueError, match="outside the alphabet"):
        get_task("parity").solve(["0", "2"])
    with pytest.raises(ValueError, match="length"):
        get_task("modular_arithmetic").solve(["1", "+"])
    with pytest.raises(ValueError, match="operators at odd positions"):
        get_task("modular_arithmetic").solve(["1", "2", "+"])
    with pytest.raises(ValueError, match="halves"):
        get_task("missing_duplicate").solve(list("01_0"))
    with pytest.raises(ValueError, match="before the first action"):
        get_task("stack_manipulation").solve(["0", "pop", "1"])


def test_chance_accuracies_are_the_papers():
    # s_rand of the paper's App. B.1.1
    expected = {"parity": 1 / 2, "even_pairs": 1 / 2, "cycle_navigation": 1 / 5, "modular_arithmetic": 1 / 5,
                "majority": 1 / 63, "majority_count": 1 / 63, "bucket_sort": 1 / 10,
                "missing_duplicate": 1 / 9, "reverse_string": 1 / 10, "repetition": 1 / 10,
                "odds_first": 1 / 10, "stack_manipulation": 1 / 4, "set": 1 / 126}
    assert set(expected) == set(TASKS)
    for name, chance in expected.items():
        assert get_task(name).chance_accuracy == pytest.approx(chance), name
    assert scaled_accuracy(0.5, 0.5) == 0.0 and scaled_accuracy(1.0, 0.2) == 1.0
    assert scaled_accuracy(0.6, 0.2) == pytest.approx(0.5)


def test_vocabularies():
    sizes = {name: get_task(name).vocab_size for name in TASKS}
    assert sizes["parity"] == sizes["even_pairs"] == 4
    assert sizes["cycle_navigation"] == sizes["modular_arithmetic"] == 10
    assert sizes["majority"] == sizes["majority_count"] == 65
    for name in TASKS:
        task = get_task(name)
        assert task.vocab[PAD_ID] == "<pad>" and task.vocab[SEP_ID] == "<sep>"
        assert task.decode(task.encode(task.vocab)) == list(task.vocab)


def test_sampling_is_deterministic_by_seed():
    task = get_task("cycle_navigation")
    a, b = task.sample(32, 3, 40, gen(7)), task.sample(32, 3, 40, gen(7))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.lengths, b.lengths)
    assert not torch.equal(task.sample(32, 3, 40, gen(8)).lengths, a.lengths)
    g = gen(7)
    task.sample(32, 3, 40, g)
    assert not torch.equal(task.sample(32, 3, 40, g).lengths, a.lengths)  # the generator advances

    s1, s2 = batches("parity", "train", 16, seed=3), batches("parity", "train", 16, seed=3)
    for _ in range(3):
        x, y = next(s1), next(s2)
        assert torch.equal(x.ids, y.ids) and torch.equal(x.targets, y.targets)

    test = fixed_set("majority", "test", 24, seed=0)
    assert torch.equal(test.ids, fixed_set("majority", "test", 24, seed=0).ids)
    assert not torch.equal(test.lengths, fixed_set("majority", "test", 24, seed=1).lengths)
    check_batch(get_task("majority"), test, 40, 256)
    train = fixed_set("majority", "train", 24, seed=0)
    check_batch(get_task("majority"), train, 3, 40)


def test_pad_to_and_minibatches():
    task = get_task("parity")
    batch = task.sample(10, 3, 40, gen(0), pad_to=300)
    assert batch.ids.shape == (10, 300)
    check_batch(task, batch, 3, 40)
    parts = list(batch.minibatches(4))
    assert [p.batch_size for p in parts] == [4, 4, 2]
    for p, start in zip(parts, (0, 4, 8), strict=True):
        assert p.ids.shape[1] == int(p.num_tokens.max())
        assert torch.equal(p.ids, batch.ids[start : start + p.batch_size, : p.ids.shape[1]])
    assert all(p.ids.shape[1] == 300 for p in batch.minibatches(4, trim=False))


def test_answer_metrics_from_logits_and_from_hidden_with_a_head():
    task = get_task("reverse_string")
    batch = task.sample(6, 3, 10, gen(0))
    V = task.vocab_size
    perfect = torch.nn.functional.one_hot(batch.targets.clamp(min=0), V).float() * 20.0
    m = answer_metrics(batch.targets, perfect)
    assert m.accuracy.item() == 1.0 and m.loss.item() < 1e-6 and m.num_answers == batch.num_answers

    torch.manual_seed(0)
    head = torch.nn.Linear(8, V)
    hidden = torch.randn(*batch.ids.shape, 8, requires_grad=True)
    full = answer_metrics(batch.targets, head(hidden))
    sparse = answer_metrics(batch.targets, hidden=hidden, head=head)
    assert torch.allclose(full.loss, sparse.loss) and torch.equal(full.accuracy, sparse.accuracy)
    sparse.loss.backward()
    assert hidden.grad[~batch.answer_mask].abs().sum() == 0 and hidden.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="exactly one"):
        answer_metrics(batch.targets)
    with pytest.raises(ValueError, match="head"):
        answer_metrics(batch.targets, hidden=hidden)
    with pytest.raises(ValueError, match="logits must be"):
        answer_metrics(batch.targets, perfect[:, :-1])
    with pytest.raises(ValueError, match="no answer positions"):
        answer_metrics(torch.full((2, 3), IGNORE_INDEX), torch.zeros(2, 3, V))


def test_bad_arguments_are_named():
    task = get_task("parity")
    with pytest.raises(ValueError, match="min_len"):
        task.sample(4, 41, 40, gen())
    with pytest.raises(ValueError, match="min_len"):
        task.sample(4, 0, 40, gen())
    with pytest.raises(ValueError, match="max_len"):
        task.sample(4, 3, 4.5, gen())
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, 3, 40, gen())
    with pytest.raises(TypeError, match="generator"):
        task.sample(4, 3, 40, 0)
    with pytest.raises(ValueError, match="pad_to"):
        task.sample(4, 30, 40, gen(), pad_to=10)
    with pytest.raises(ValueError, match=r"no valid length in \[min_len, max_len\]"):
        get_task("modular_arithmetic").sample(4, 4, 4, gen())
    with pytest.raises(ValueError, match="task name"):
        get_task("palindrome")
    with pytest.raises(ValueError, match="split"):
        split_lengths("validation")
    with pytest.raises(ValueError, match="seed"):
        fixed_set("parity", "test", 4, seed=-1)
    with pytest.raises(ValueError, match="modulus"):
        formal.ModularArithmetic(modulus=1)
