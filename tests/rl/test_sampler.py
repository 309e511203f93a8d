"""The training sampler: determinism, masks and padding, RTGs, domains per micro-batch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xlram.rl.conventions import STATE_DIM  # noqa: E402
from xlram.rl.datasets import TaskData  # noqa: E402
from xlram.rl.sampler import SegmentSampler  # noqa: E402


def _task(task_id, lengths, discrete=False, act_dim=3, image=False, seed=0):
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    obs = (
        rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
        if image
        else rng.standard_normal((n, STATE_DIM)).astype(np.float32)
    )
    # observation i carries its global index, so tests can see which steps were gathered
    if not image:
        obs[:, 0] = np.arange(n)
    acts = rng.integers(0, 18, n) if discrete else rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    lengths = np.asarray(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return TaskData(
        task_id=task_id,
        domain=task_id.split("/")[0],
        obs=obs,
        actions=acts,
        rewards=rng.integers(0, 3, n).astype(np.float32),
        starts=starts,
        lengths=lengths,
        discrete=discrete,
        action_dim=1 if discrete else act_dim,
        episode_meta=[{}] * len(lengths),
        meta={},
        path=None,
    )


def _data():
    compact = _task("metaworld/b", [40], act_dim=4, seed=2)
    compact.obs = compact.obs[:, :39].copy()  # a compact 39-d task beside a 204-d one: padded per batch
    return [
        _task("metaworld/a", [30, 5, 12], seed=1),
        _task("metaworld/b", [40], act_dim=4, seed=2),
        _task("dmcontrol/c", [20, 20], act_dim=1, seed=3),
        _task("darkroom/goal-1-1", [10, 10, 10], discrete=True, seed=4),
    ]


def test_same_seed_same_batches():
    a = SegmentSampler(_data(), context=8, batch_size=16, seed=3)
    b = SegmentSampler(_data(), context=8, batch_size=16, seed=3)
    c = SegmentSampler(_data(), context=8, batch_size=16, seed=4)
    for _ in range(6):
        x, y, z = a.next(), b.next(), c.next()
        assert x.domain == y.domain == z.domain
        for k in ("obs", "actions", "rtg", "mask", "task_index"):
            assert torch.equal(getattr(x, k), getattr(y, k))
    assert not torch.equal(a.sample("metaworld").obs, c.sample("metaworld").obs)


def test_one_domain_per_batch_cycling():
    s = SegmentSampler(_data(), context=4, batch_size=8, seed=0)
    assert s.domains == ["darkroom", "dmcontrol", "metaworld"]
    assert [s.next().domain for _ in range(6)] == s.domains * 2
    b = s.sample("metaworld")
    assert set(b.task_index.tolist()) <= {0, 1}


def test_masks_padding_and_rtg():
    data = _data()
    s = SegmentSampler(data, context=16, batch_size=256, seed=1)
    b = s.sample("metaworld")
    rtg_all = {}
    for task_i, td in enumerate(data[:2]):
        from xlram.rl.conventions import returns_to_go

        rtg_all[task_i] = returns_to_go(td.rewards / 200.0, td.starts)
    for i in range(b.obs.shape[0]):
        m = b.mask[i].numpy()
        # left padding: padded steps first, then real ones up to the end
        assert m[-1] and (np.diff(m.astype(int)) >= 0).all()
        assert not b.obs[i][~m].any() and not b.rtg[i][~m].any()
        assert (b.action_targets[i][~m] == -100).all()
        ti = int(b.task_index[i])
        td = data[ti]
        if td.obs.shape[1] < STATE_DIM:
            assert not b.obs[i][:, td.obs.shape[1] :].any()
        steps = b.obs[i][m][:, 0].numpy().astype(int)  # global indices of the gathered steps
        assert (np.diff(steps) == 1).all()
        ep = np.searchsorted(td.starts, steps, side="right") - 1
        assert len(set(ep.tolist())) == 1  # never crosses an episode boundary here
        np.testing.assert_allclose(b.rtg[i][m].numpy(), rtg_all[ti][steps], rtol=1e-5)
        np.testing.assert_allclose(b.rewards[i][m].numpy(), td.rewards[steps] / 200.0, rtol=1e-6)
        first = b.first[i][m].numpy()
        np.testing.assert_array_equal(first, np.isin(steps, td.starts))
        prev = b.prev_rewards[i][m].numpy()
        assert (prev[first] == 0).all()
        np.testing.assert_allclose(prev[~first], td.rewards[steps[~first] - 1] / 200.0, rtol=1e-6)
        if not m.all():
            assert steps[0] in td.starts  # padded only because the episode starts there
        dims = int(b.action_dim_mask[i].sum())
        assert dims == td.action_dim
        assert (b.action_targets[i][m][:, :dims] >= 18).all() and (
            b.action_targets[i][m][:, dims:] == -100
        ).all()
    assert b.mask.float().mean() < 1.0  # the short episodes do get padded
    assert b.obs.shape == (256, 16, STATE_DIM) and b.actions.shape == (256, 16, 8)


def test_darkroom_segments_cross_episodes():
    s = SegmentSampler(_data(), context=25, batch_size=64, seed=0)
    b = s.sample("darkroom")
    assert b.discrete and b.actions.shape == (64, 25) and b.actions.dtype == torch.int64
    crossed = False
    for i in range(64):
        m = b.mask[i].numpy()
        steps = b.obs[i][m][:, 0].numpy().astype(int)
        assert (np.diff(steps) == 1).all()
        crossed |= bool(b.first[i][m][1:].any())
        assert (b.timesteps[i][m].numpy() == steps % 10).all()
    assert crossed
    assert (b.action_targets[:, :, 0][b.mask] < 18).all()


def test_images_and_errors():
    s = SegmentSampler(
        [_task("atari/pong", [50, 7], discrete=True, image=True)], context=10, batch_size=4, seed=0
    )
    b = s.sample("atari")
    assert b.obs.shape == (4, 10, 64, 64, 3) and b.obs.dtype == torch.uint8
    with pytest.raises(ValueError, match="no data for domain"):
        s.sample("metaworld")
    with pytest.raises(ValueError, match="context"):
        SegmentSampler(_data(), context=0)
    with pytest.raises(ValueError, match="mixes"):
        SegmentSampler([_task("x/a", [5]), _task("x/b", [5], discrete=True)])
    it = s.prefetch(2)
    first = next(it)
    assert first.domain == "atari"
