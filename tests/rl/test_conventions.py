"""The shared conventions: padding, DMControl slots, reward scaling, returns-to-go, action bins.
These need only NumPy."""

import numpy as np
import pytest

from xlram.rl.conventions import (
    DMC_SLOTS,
    DOMAINS,
    MAX_ACTION_DIM,
    STATE_DIM,
    bin_actions,
    dmc_to_vector,
    pad_state,
    returns_to_go,
    scale_rewards,
    unbin_actions,
)


def test_pad_state_zero_pads_to_204():
    x = np.arange(39, dtype=np.float64).reshape(1, 39)
    y = pad_state(x)
    assert y.shape == (1, STATE_DIM) and y.dtype == np.float32
    np.testing.assert_array_equal(y[0, :39], np.arange(39))
    assert not y[0, 39:].any()


def test_pad_state_rejects_too_wide():
    with pytest.raises(ValueError, match="205 dimensions"):
        pad_state(np.zeros(205))


def test_dmc_slots_cover_204_without_overlap():
    covered = np.zeros(STATE_DIM, int)
    for sl in DMC_SLOTS.values():
        covered[sl] += 1
    assert (covered == 1).all()
    # fixed places: the layout is part of the data format, it must never move
    assert DMC_SLOTS["orientations"] == slice(0, 14)
    assert DMC_SLOTS["velocity"] == slice(14, 41)
    assert DMC_SLOTS["height"] == slice(203, 204)


def test_dmc_to_vector_places_keys_in_their_slots():
    v = dmc_to_vector({"position": np.array([1.0, 2.0, 3.0]), "velocity": np.array([4.0, 5.0])})
    assert v.shape == (STATE_DIM,)
    np.testing.assert_array_equal(v[DMC_SLOTS["position"]][:3], [1, 2, 3])
    np.testing.assert_array_equal(v[DMC_SLOTS["velocity"]][:2], [4, 5])
    assert v.sum() == 15


def test_dmc_to_vector_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="no slot"):
        dmc_to_vector({"nonsense": np.zeros(2)})


def test_returns_to_go_per_episode():
    r = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    rtg = returns_to_go(r, episode_starts=[0, 3])
    np.testing.assert_allclose(rtg, [6, 5, 3, 30, 20])
    np.testing.assert_allclose(returns_to_go(r), [36, 35, 33, 30, 20])


def test_scale_rewards_per_domain():
    assert DOMAINS["metaworld"].reward_scale == 200 and DOMAINS["dmcontrol"].reward_scale == 100
    np.testing.assert_allclose(scale_rewards(np.array([7.0, -3.0, 0.0]), "atari"), [1 / 20, -1 / 20, 0])
    np.testing.assert_allclose(scale_rewards(np.array([10.0]), "metaworld"), [0.05])


def test_action_bins_decode_to_centres():
    a = np.array([-1.0, -0.999, 0.0, 0.5, 1.0])
    idx = bin_actions(a)
    assert idx.min() >= 0 and idx.max() <= 255
    assert idx[0] == 0 and idx[-1] == 255
    centres = unbin_actions(idx)
    assert np.all(np.abs(centres - a) <= 1 / 256 + 1e-6)  # within half a bin
    assert MAX_ACTION_DIM == 8
