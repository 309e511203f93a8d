"""Each domain's environment and the observation/action conventions it follows."""

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from xlram.rl.conventions import DMC_SLOTS, IMAGE_SHAPE, STATE_DIM  # noqa: E402
from xlram.rl.envs import UnknownTaskError, list_tasks, make_env, parse_task_id  # noqa: E402


def _rollout(env, n, seed=0):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        a = (
            env.action_space.sample()
            if not hasattr(env.action_space, "n")
            else int(rng.integers(env.action_space.n))
        )
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        if term or trunc:
            break
    return np.stack(out)


def test_unknown_task_and_domain_names_raise_clear_errors():
    with pytest.raises(UnknownTaskError, match="did you mean 'metaworld/reach'"):
        parse_task_id("metaworld/reech")
    with pytest.raises(UnknownTaskError, match="unknown domain task 'mujoco'"):
        make_env("mujoco/ant")
    with pytest.raises(UnknownTaskError, match="domain/task"):
        make_env("reach")


def test_task_lists():
    assert len(list_tasks("metaworld")) == 50
    assert len(list_tasks("darkroom")) == 100
    assert {"atari/pong", "atari/breakout", "atari/freeway"} <= set(list_tasks("atari"))
    from xlram.rl.envs import darkroom

    assert len(darkroom.TRAIN_GOALS) == 80 and len(darkroom.HELD_OUT_GOALS) == 20
    assert not set(darkroom.TRAIN_GOALS) & set(darkroom.HELD_OUT_GOALS)


def test_metaworld_env():
    pytest.importorskip("metaworld")
    env = make_env("metaworld/reach")
    assert env.observation_space.shape == (STATE_DIM,)
    assert env.action_space.shape == (4,) and env.action_space.low.min() == -1
    obs = _rollout(env, 250, seed=3)
    assert obs.shape[0] == 201  # capped at 200 steps
    assert obs.dtype == np.float32 and not obs[:, 39:].any()
    # the goal is visible (the shipped experts read it) and random per reset
    assert np.abs(obs[0, 36:39]).sum() > 0
    compact = make_env("metaworld/reach", padded=False)
    o1, _ = compact.reset(seed=5)
    o2, _ = compact.reset(seed=5)
    o3, _ = compact.reset(seed=6)
    assert o1.shape == (39,)
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(o1[36:39], o3[36:39])


def test_dmcontrol_env_slots():
    pytest.importorskip("dm_control")
    env = make_env("dmcontrol/cartpole-swingup")
    assert env.observation_space.shape == (STATE_DIM,)
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped.last_observation
    np.testing.assert_allclose(obs[DMC_SLOTS["position"]][:3], raw["position"], rtol=1e-6)
    np.testing.assert_allclose(obs[DMC_SLOTS["velocity"]][:2], raw["velocity"], rtol=1e-6)
    used = np.zeros(STATE_DIM, bool)
    used[DMC_SLOTS["position"].start : DMC_SLOTS["position"].start + 3] = True
    used[DMC_SLOTS["velocity"].start : DMC_SLOTS["velocity"].start + 2] = True
    assert not obs[~used].any()
    # the same key lands in the same units in another task
    env2 = make_env("dmcontrol/point_mass-easy")
    obs2, _ = env2.reset(seed=0)
    np.testing.assert_allclose(
        obs2[DMC_SLOTS["position"]][:2], env2.unwrapped.last_observation["position"], rtol=1e-6
    )
    o, r, term, trunc, _ = env.step(np.zeros(1, np.float32))
    assert 0.0 <= r <= 1.0 and not term and not trunc
    # same seed, same start
    a, _ = env.reset(seed=11)
    b, _ = env.reset(seed=11)
    np.testing.assert_array_equal(a, b)


def test_atari_env():
    pytest.importorskip("ale_py")
    env = make_env("atari/pong")
    assert env.observation_space.shape == IMAGE_SHAPE and env.observation_space.dtype == np.uint8
    assert env.action_space.n == 18
    frames = _rollout(env, 50, seed=1)
    assert frames.shape[1:] == IMAGE_SHAPE and frames.dtype == np.uint8
    assert frames.std() > 0
    with pytest.raises(ValueError, match="action must be in"):
        env.step(18)
    # clipped reward, raw score in info
    env.reset(seed=2)
    for _ in range(300):
        _, r, term, trunc, info = env.step(0)
        assert r in (-1.0, 0.0, 1.0) and np.sign(info["raw_reward"]) == r
    a, _ = env.reset(seed=9)
    b, _ = env.reset(seed=9)
    np.testing.assert_array_equal(a, b)


def test_darkroom_env():
    env = make_env("darkroom/goal-7-5")
    assert env.observation_space.shape == (STATE_DIM,)
    assert env.action_space.n == 5
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[:2], [5 / 9, 5 / 9])
    total = 0.0
    for a in [4, 4, 0, 0]:  # right twice reaches (7, 5), then stay
        obs, r, term, trunc, _ = env.step(a)
        total += r
    assert total == 3.0 and not term
    n = 4
    while not trunc:
        _, _, term, trunc, _ = env.step(0)
        n += 1
    assert n == 100
    from xlram.rl.envs.darkroom import optimal_return

    assert optimal_return((7, 5)) == 99
