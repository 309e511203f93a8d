"""robosuite manipulation tasks (Panda arm), the stand-in for the reference's Composuite and Mimicgen
domains (neither is on PyPI).

Like Mimicgen the reward is sparse: 1 on the step the task succeeds, which also ends the episode, so a
return is a success (1) or not (0); episodes are capped at 200 control steps (20 Hz). Observations:
the robot's proprioceptive state (43) and the task's object state, concatenated (Lift: 53, Door: 57).
Actions: 7-d in [-1, 1], the default operational-space controller (end-effector position and rotation
deltas) and the gripper.
"""

from __future__ import annotations

import logging

import numpy as np

from xlram.rl.envs.base import TaskEnv, require

DOMAIN = "robosuite"
EPISODE_STEPS = 200
TASKS: tuple[str, ...] = ("lift", "door")
_CLASS = {"lift": "Lift", "door": "Door"}
HELD_OUT: tuple[str, ...] = ()


class RobosuiteEnv(TaskEnv):
    """One robosuite task. obs (d,) float32, action (7,) in [-1, 1], sparse success reward."""

    def __init__(self, task: str, max_episode_steps: int = EPISODE_STEPS):
        super().__init__(DOMAIN, task, TASKS)
        gym = require("gymnasium")
        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        suite = require("robosuite")
        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        kwargs = {"use_latch": False} if task == "door" else {}
        self._env = suite.make(
            _CLASS[task],
            robots="Panda",
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            reward_shaping=False,
            control_freq=20,
            horizon=max_episode_steps + 1,
            ignore_done=True,
            **kwargs,
        )
        self.max_episode_steps = max_episode_steps
        low, high = self._env.action_spec
        self._low, self._high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.last_observation = self._env.reset()
        dim = self._flat(self.last_observation).shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, self._low.shape, np.float32)
        self._t = 0

    @staticmethod
    def _flat(obs: dict) -> np.ndarray:
        return np.concatenate([obs["robot0_proprio-state"], obs["object-state"]]).astype(np.float32)

    @property
    def sim(self):
        """The robosuite environment (the scripted controllers read object and gripper poses from it)."""
        return self._env

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None or not hasattr(self, "_reseeded"):
            s = int(seed) if seed is not None else int(self.np_random.integers(2**31))
            # robosuite places objects with NumPy's global generator
            np.random.seed(s % (2**32))  # noqa: NPY002 - robosuite samples placements from it
            self._reseeded = True
        self.last_observation = self._env.reset()
        self._t = 0
        return self._flat(self.last_observation), {"success": 0.0}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        self.last_observation, _, _, _ = self._env.step(a)
        self._t += 1
        success = bool(self._env._check_success())
        truncated = not success and self._t >= self.max_episode_steps
        return (
            self._flat(self.last_observation),
            float(success),
            success,
            truncated,
            {"success": float(success)},
        )

    def close(self):
        self._env.close()
