"""The observation, action and reward conventions shared by every domain (SPEC section 5).

* State vectors are zero-padded to ``STATE_DIM`` (204). DMControl observations are written into a fixed
  "union" layout (``DMC_SLOTS``) so that the same observation key always lands on the same input units,
  whatever the task. Other state domains fill a prefix and leave the rest zero.
* Image domains give 64×64 RGB frames, ``uint8``, channels last: ``(64, 64, 3)``.
* Continuous actions live in [-1, 1] with at most ``MAX_ACTION_DIM`` (8) dimensions; discrete actions are
  indices into the full 18-action (Atari) set, ``NUM_DISCRETE_ACTIONS``.
* Rewards and returns-to-go are divided by a per-domain scale before they reach the model; Atari rewards
  are clipped to their sign first.

This module needs only NumPy, so the conventions can be used (by the model, the sampler, the tests)
without any simulator installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_DIM = 204
MAX_ACTION_DIM = 8
NUM_DISCRETE_ACTIONS = 18
NUM_ACTION_BINS = 256
IMAGE_SHAPE = (64, 64, 3)


@dataclass(frozen=True)
class DomainInfo:
    """What every task of a domain shares.

    ``obs_kind`` is ``"state"`` (vectors padded to STATE_DIM) or ``"image"`` (IMAGE_SHAPE uint8 frames);
    ``action_kind`` is ``"continuous"`` or ``"discrete"``; RTGs and rewards are divided by
    ``reward_scale``; ``clip_rewards`` clips rewards to their sign before that (Atari).
    """

    name: str
    obs_kind: str
    action_kind: str
    reward_scale: float
    clip_rewards: bool = False


# Scales from the reference configuration (Meta-World 200, DMControl 100, Atari 20 with clipped
# rewards, Composuite/Mimicgen 1; robosuite stands in for the last two). Dark-Room rewards are 1 per
# step spent on the goal over 100-step episodes, so 100 keeps its RTGs in [0, 1] like the others.
DOMAINS: dict[str, DomainInfo] = {
    "metaworld": DomainInfo("metaworld", "state", "continuous", 200.0),
    "dmcontrol": DomainInfo("dmcontrol", "state", "continuous", 100.0),
    "atari": DomainInfo("atari", "image", "discrete", 20.0, clip_rewards=True),
    "darkroom": DomainInfo("darkroom", "state", "discrete", 100.0),
    "robosuite": DomainInfo("robosuite", "state", "continuous", 1.0),
}


def domain_info(name: str) -> DomainInfo:
    """The DomainInfo of `name`; an unknown domain gets a state/continuous default with scale 1."""
    if name in DOMAINS:
        return DOMAINS[name]
    return DomainInfo(name, "state", "continuous", 1.0)


# Fixed DMControl layout: every observation key of the dm_control benchmarking tasks gets its own slot,
# sized by the largest instance of that key across those tasks, in order of first appearance. The
# union is exactly 204 wide, which is where the shared state size comes from.
_DMC_KEY_SIZES: tuple[tuple[str, int], ...] = (
    ("orientations", 14),
    ("velocity", 27),
    ("position", 8),
    ("touch", 5),
    ("target_position", 2),
    ("dist_to_target", 1),
    ("joint_angles", 21),
    ("upright", 1),
    ("target", 3),
    ("head_height", 1),
    ("extremities", 12),
    ("torso_vertical", 3),
    ("com_velocity", 3),
    ("arm_pos", 16),
    ("arm_vel", 8),
    ("hand_pos", 4),
    ("object_pos", 4),
    ("object_vel", 3),
    ("target_pos", 4),
    ("orientation", 2),
    ("to_target", 2),
    ("joints", 14),
    ("body_velocities", 45),
    ("height", 1),
)


def _slots() -> dict[str, slice]:
    out, start = {}, 0
    for key, size in _DMC_KEY_SIZES:
        out[key] = slice(start, start + size)
        start += size
    if start != STATE_DIM:  # pragma: no cover - guards edits to the table above
        raise RuntimeError(f"DMControl slot table is {start} wide, expected {STATE_DIM}")
    return out


DMC_SLOTS: dict[str, slice] = _slots()


def dmc_to_vector(obs: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Write a DMControl observation dict into its fixed slots of a (STATE_DIM,) float32 vector.

    Unknown keys, or a value larger than its slot, raise ValueError (the layout would be ambiguous).
    """
    vec = np.zeros(STATE_DIM, np.float32) if out is None else out
    for key, value in obs.items():
        if key not in DMC_SLOTS:
            raise ValueError(
                f"DMControl observation key {key!r} has no slot; known keys: {sorted(DMC_SLOTS)}"
            )
        flat = np.asarray(value, np.float32).reshape(-1)
        sl = DMC_SLOTS[key]
        if flat.size > sl.stop - sl.start:
            raise ValueError(
                f"DMControl key {key!r} has {flat.size} values, its slot holds {sl.stop - sl.start}"
            )
        vec[sl.start : sl.start + flat.size] = flat
    return vec


def pad_state(x: np.ndarray, dim: int = STATE_DIM) -> np.ndarray:
    """Zero-pad the last axis of `x` (..., d) to (..., dim) float32; d > dim raises ValueError."""
    x = np.asarray(x, np.float32)
    d = x.shape[-1]
    if d > dim:
        raise ValueError(f"state vectors have {d} dimensions, more than the shared size {dim}")
    if d == dim:
        return x
    out = np.zeros((*x.shape[:-1], dim), np.float32)
    out[..., :d] = x
    return out


def scale_rewards(rewards: np.ndarray, domain: str) -> np.ndarray:
    """Rewards as the model sees them: clipped to their sign where the domain says so, then divided by
    the domain's scale. (T,) -> (T,) float32."""
    info = domain_info(domain)
    r = np.asarray(rewards, np.float32)
    if info.clip_rewards:
        r = np.sign(r)
    return r / np.float32(info.reward_scale)


def returns_to_go(rewards: np.ndarray, episode_starts: np.ndarray | None = None) -> np.ndarray:
    """Undiscounted returns-to-go R̂_t = Σ_{k≥t} r_k within each episode.

    `rewards` (T,) holds one or several episodes back to back; `episode_starts` (sorted indices, the
    first 0) marks where each begins (default: one episode). Returns (T,) float64 (float32 for
    float32 input).
    """
    r = np.asarray(rewards)
    dtype = np.float32 if r.dtype == np.float32 else np.float64
    r = r.astype(np.float64)
    T = r.shape[0]
    starts = np.asarray([0] if episode_starts is None else episode_starts, np.int64)
    ends = np.append(starts[1:], T)
    out = np.empty(T, np.float64)
    for s, e in zip(starts, ends, strict=True):
        out[s:e] = np.cumsum(r[s:e][::-1])[::-1]
    return out.astype(dtype)


def bin_actions(actions: np.ndarray, bins: int = NUM_ACTION_BINS) -> np.ndarray:
    """Continuous actions in [-1, 1] -> bin indices in [0, bins) (uniform bins, clamped)."""
    a = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
    return np.minimum(((a + 1.0) * (bins / 2.0)).astype(np.int64), bins - 1)


def unbin_actions(idx: np.ndarray, bins: int = NUM_ACTION_BINS) -> np.ndarray:
    """Bin indices -> the bins' centres in [-1, 1] (not the lower edges: that would bias by half a bin)."""
    return (-1.0 + (np.asarray(idx, np.float64) + 0.5) * (2.0 / bins)).astype(np.float32)
