"""DMControl (`dm-control` suite) tasks as state-vector envs in the shared 204-slot layout.

Observations: every key of the task's observation dict written into its fixed slot
(`xlram.rl.conventions.DMC_SLOTS`), so the vector is always (204,) float32. Actions: the task's
actuators, rescaled from [-1, 1] to their bounds. Episodes: the suite's own limit (1000 control steps
for the tasks here). Rewards in [0, 1] per step, so returns are out of 1000.
"""

from __future__ import annotations

import numpy as np

from xlram.rl.conventions import MAX_ACTION_DIM, STATE_DIM, dmc_to_vector
from xlram.rl.envs.base import TaskEnv, require

DOMAIN = "dmcontrol"

# The dm_control benchmarking tasks whose actions fit in 8 dimensions ("domain-task").
TASKS: tuple[str, ...] = (
    "acrobot-swingup",
    "acrobot-swingup_sparse",
    "ball_in_cup-catch",
    "cartpole-balance",
    "cartpole-balance_sparse",
    "cartpole-swingup",
    "cartpole-swingup_sparse",
    "cheetah-run",
    "finger-spin",
    "finger-turn_easy",
    "finger-turn_hard",
    "fish-upright",
    "fish-swim",
    "hopper-stand",
    "hopper-hop",
    "manipulator-bring_ball",
    "pendulum-swingup",
    "point_mass-easy",
    "reacher-easy",
    "reacher-hard",
    "swimmer-swimmer6",
    "walker-stand",
    "walker-walk",
    "walker-run",
)
# The reference's held-out five (its training set has eleven others).
HELD_OUT: tuple[str, ...] = (
    "cartpole-balance",
    "finger-turn_hard",
    "pendulum-swingup",
    "reacher-hard",
    "walker-walk",
)


def split_task(task: str) -> tuple[str, str]:
    domain, _, name = task.partition("-")
    return domain, name


class DMControlEnv(TaskEnv):
    """One dm_control suite task. obs (204,) float32, action (d,) in [-1, 1], d ≤ 8."""

    def __init__(self, task: str):
        super().__init__(DOMAIN, task, TASKS)
        gym = require("gymnasium")
        suite = require("dm_control.suite")
        dom, name = split_task(task)
        self._env = suite.load(dom, name, task_kwargs={"random": 0})
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, np.float64)
        self._high = np.asarray(spec.maximum, np.float64)
        if spec.shape[0] > MAX_ACTION_DIM:  # pragma: no cover - the task list above excludes these
            raise ValueError(f"{self.task_id} has {spec.shape[0]} action dims, more than {MAX_ACTION_DIM}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self.max_episode_steps = int(round(self._env._step_limit))
        self.last_observation: dict[str, np.ndarray] = {}

    @property
    def physics(self):
        """The dm_control Physics (the scripted controllers read joint angles and sites from it)."""
        return self._env.physics

    def _obs(self, ts) -> np.ndarray:
        self.last_observation = ts.observation
        return dmc_to_vector(ts.observation)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None or not hasattr(self, "_reseeded"):
            s = int(seed) if seed is not None else int(self.np_random.integers(2**31))
            # dm_control draws initial states from the task's RandomState; replace it to reseed.
            self._env.task._random = np.random.RandomState(s)
            self._reseeded = True
        ts = self._env.reset()
        return self._obs(ts), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        ts = self._env.step(a)
        reward = float(ts.reward or 0.0)
        last = ts.last()
        # The suite's tasks end only by time limit (discount stays 1), so a last step is a truncation.
        terminated = bool(last and ts.discount == 0.0)
        truncated = bool(last and not terminated)
        return self._obs(ts), reward, terminated, truncated, {}

    def close(self):
        self._env.close()
