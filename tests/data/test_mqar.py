"""MQAR (Zoology's multi-query associative recall): answers, vocabulary ranges, query spacing, splits."""

import numpy as np
import pytest
import torch

from xlram.data import mqar
from xlram.data.mqar import (
    IGNORE_INDEX,
    PRESETS,
    VOCAB_SIZE,
    answer_metrics,
    fixed_split,
    get_setting,
    sample,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_batch(batch, context_len, num_kv_pairs, vocab_size=VOCAB_SIZE):
    B, K, half = batch.batch_size, num_kv_pairs, vocab_size // 2
    assert batch.ids.shape == batch.targets.shape == (B, context_len)
    assert batch.ids.dtype == batch.targets.dtype == torch.long
    assert bool((batch.lengths == context_len).all()) and bool((batch.num_tokens == context_len).all())
    assert 0 <= int(batch.ids.min()) and int(batch.ids.max()) < vocab_size
    for b in range(B):
        ids, targets = batch.ids[b].tolist(), batch.targets[b].tolist()
        keys, values = ids[0 : 2 * K : 2], ids[1 : 2 * K : 2]
        assert len(set(keys)) == K and len(set(values)) == K  # distinct within the sample
        assert all(1 <= k < half for k in keys) and all(half <= v < vocab_size for v in values)
        pairs = dict(zip(keys, values, strict=True))
        answers = [p for p, t in enumerate(targets) if t != IGNORE_INDEX]
        assert len(answers) == K
        for p in answers:
            assert p >= 2 * K and (p - 2 * K) % 2 == 0  # after the pairs, at even offsets
            assert ids[p] in pairs and targets[p] == pairs[ids[p]]  # the value paired with the key earlier
        assert sorted(ids[p] for p in answers) == sorted(keys)  # every key is queried once


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_answers_are_the_paired_values(name):
    setting = get_setting(name)
    batch = sample(48, setting.context_len, setting.num_kv_pairs, gen(1))
    check_batch(batch, setting.context_len, setting.num_kv_pairs)
    assert batch.num_answers == 48 * setting.num_kv_pairs


def test_presets_are_the_papers_exp1():
    assert {(s.context_len, s.num_kv_pairs) for s in PRESETS.values()} == {(64, 4), (128, 8), (256, 16)}
    assert get_setting("cl256_kv16").batch_size == 256 and get_setting("cl64_kv4").batch_size == 512
    assert VOCAB_SIZE == 8192 and mqar.POWER_A == 0.01


def test_fillers_are_random_tokens_or_zero():
    random_fill = sample(64, 64, 4, gen(2))
    zero_fill = sample(64, 64, 4, gen(2), random_non_queries=False)
    check_batch(zero_fill, 64, 4)
    filler = ~zero_fill.answer_mask
    filler[:, :8] = False
    assert bool((zero_fill.ids[filler] == 0).all())
    assert random_fill.ids[filler].unique().numel() > 1000  # uniform over the 8192 tokens
    assert torch.equal(random_fill.targets, zero_fill.targets)


def test_query_gaps_follow_zoologys_power_law():
    """Inclusion frequency of each gap against Zoology's own sampler (numpy choice without replacement)."""
    context_len, K, n = 64, 4, 3000
    space = (context_len - 2 * K) // 2
    positions = torch.nonzero(sample(n, context_len, K, gen(3)).answer_mask)[:, 1]
    ours = np.bincount(((positions - 2 * K) // 2).numpy(), minlength=space) / n

    rng = np.random.default_rng(0)
    p = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    p = p / p.sum()
    reference = np.bincount(np.concatenate([rng.choice(space, size=K, replace=False, p=p) for _ in range(n)]),
                            minlength=space) / n
    assert np.abs(ours - reference).max() < 0.05
    assert ours[0] > 0.6 and ours[:space // 2].sum() > 3.0  # most queries sit close to the pairs


def test_small_vocabularies_still_give_distinct_uniform_keys():
    # Both ways of drawing distinct keys: ranking scores (K^2 > range) and redrawing rows with a repeat.
    check_batch(sample(32, 64, 8, gen(4), vocab_size=64), 64, 8, vocab_size=64)
    batch = sample(4000, 32, 8, gen(4), vocab_size=200)
    check_batch(batch, 32, 8, vocab_size=200)  # keys in [1, 100): about a quarter of the rows redrawn
    counts = torch.bincount(batch.ids[:, 0:16:2].flatten(), minlength=100)[1:100].float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_determinism_and_fixed_splits():
    a, b = sample(16, 128, 8, gen(5)), sample(16, 128, 8, gen(5))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.targets, b.targets)
    assert not torch.equal(sample(16, 128, 8, gen(6)).ids, a.ids)

    test = fixed_split("cl64_kv4", "test", 40, seed=0)
    check_batch(test, 64, 4)
    assert torch.equal(test.ids, fixed_split("cl64_kv4", "test", 40, seed=0).ids)
    train = fixed_split("cl64_kv4", "train", 40, seed=0)
    check_batch(train, 64, 4)
    assert not torch.equal(train.ids, test.ids)
    assert not torch.equal(fixed_split("cl64_kv4", "test", 40, seed=1).ids, test.ids)
    assert mqar.SPLIT_SIZES == {"train": 100_000, "test": 3_000}


def test_answer_metrics_with_a_head_avoid_the_full_softmax():
    batch = sample(4, 64, 4, gen(7))
    torch.manual_seed(0)
    head = torch.nn.Linear(16, VOCAB_SIZE)
    hidden = torch.randn(4, 64, 16)
    sparse = answer_metrics(batch.targets, hidden=hidden, head=head)
    full = answer_metrics(batch.targets, head(hidden))
    assert sparse.num_answers == 16
    assert torch.allclose(sparse.loss, full.loss) and torch.equal(sparse.accuracy, full.accuracy)
    assert sparse.loss.item() == pytest.approx(np.log(VOCAB_SIZE), rel=0.1)

    perfect = torch.full((4, 64, VOCAB_SIZE), -10.0)
    perfect.scatter_(2, batch.targets.clamp(min=0).unsqueeze(-1), 10.0)
    assert answer_metrics(batch.targets, perfect).accuracy.item() == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_kv_pairs=17 is too large for context_len=64"):
        sample(2, 64, 17, gen())
    with pytest.raises(ValueError, match="num_kv_pairs"):
        sample(2, 64, 0, gen())
    with pytest.raises(ValueError, match="context_len must be even"):
        sample(2, 63, 4, gen())
    with pytest.raises(ValueError, match="batch_size"):
        sample(0, 64, 4, gen())
    with pytest.raises(ValueError, match="num_kv_pairs=8 exceeds"):
        sample(2, 64, 8, gen(), vocab_size=16)
    with pytest.raises(ValueError, match="power_a"):
        sample(2, 64, 4, gen(), power_a=0.0)
    with pytest.raises(TypeError, match="generator"):
        sample(2, 64, 4, 0)
    with pytest.raises(ValueError, match="preset name"):
        get_setting("cl512_kv32")
    with pytest.raises(ValueError, match="split"):
        fixed_split("cl64_kv4", "validation")
    with pytest.raises(ValueError, match="num_samples"):
        fixed_split("cl64_kv4", "test", 0)
