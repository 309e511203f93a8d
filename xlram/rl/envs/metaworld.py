"""Meta-World (v3 tasks of the `metaworld` package): the 50 MT50 manipulation tasks as state-vector envs.

Observations are the package's 39-d vector with the goal visible (the shipped scripted experts read it);
every reset draws a new object/goal placement from the env's seeded generator ("random_init_all" in the
reference). Episodes are capped at 200 steps, as in the reference, instead of the package's 500.
Actions: 4-d in [-1, 1]. Reward: the package's v2 reward function, up to 10 per step.
``info["success"]`` is the package's success flag for the step.
"""

from __future__ import annotations

import warnings

import numpy as np

from xlram.rl.envs.base import TaskEnv, require

DOMAIN = "metaworld"
EPISODE_STEPS = 200
OBS_DIM = 39
ACTION_DIM = 4

# MT50, v3 names without the "-v3" suffix, in the package's order.
TASKS: tuple[str, ...] = (
    "assembly",
    "basketball",
    "bin-picking",
    "box-close",
    "button-press-topdown",
    "button-press-topdown-wall",
    "button-press",
    "button-press-wall",
    "coffee-button",
    "coffee-pull",
    "coffee-push",
    "dial-turn",
    "disassemble",
    "door-close",
    "door-lock",
    "door-open",
    "door-unlock",
    "hand-insert",
    "drawer-close",
    "drawer-open",
    "faucet-open",
    "faucet-close",
    "hammer",
    "handle-press-side",
    "handle-press",
    "handle-pull-side",
    "handle-pull",
    "lever-pull",
    "pick-place-wall",
    "pick-out-of-hole",
    "pick-place",
    "plate-slide",
    "plate-slide-side",
    "plate-slide-back",
    "plate-slide-back-side",
    "peg-insert-side",
    "peg-unplug-side",
    "soccer",
    "stick-push",
    "stick-pull",
    "push",
    "push-wall",
    "push-back",
    "reach",
    "reach-wall",
    "shelf-place",
    "sweep-into",
    "sweep",
    "window-open",
    "window-close",
)
# The reference's held-out five; the rest is its MT45 training set.
HELD_OUT: tuple[str, ...] = ("bin-picking", "box-close", "hand-insert", "door-lock", "door-unlock")
# MT10, the package's own small benchmark.
MT10: tuple[str, ...] = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "peg-insert-side",
    "window-open",
    "window-close",
)


class MetaWorldEnv(TaskEnv):
    """One Meta-World v3 task. obs (39,) float32, action (4,) in [-1, 1], 200 steps per episode."""

    def __init__(self, task: str, max_episode_steps: int = EPISODE_STEPS):
        super().__init__(DOMAIN, task, TASKS)
        gym = require("gymnasium")
        env_dict = require("metaworld.env_dict", extra="metaworld")
        cls = env_dict.ALL_V3_ENVIRONMENTS[f"{task}-v3"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = cls()
            # Goal observable, fresh random placement at every reset from the env's own seeded RNG.
            env._partially_observable = False
            del env.sawyer_observation_space  # a cached property, recomputed for the new observability
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            env._set_task_called = True
            env.max_path_length = max_episode_steps
        self._env = env
        self.max_episode_steps = max_episode_steps
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._t = 0
        self._seeded = False

    @property
    def sim(self):
        """The underlying metaworld env (the scripted experts do not need it: they read the obs)."""
        return self._env

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # metaworld seeds through env.seed(); draw one from our generator when none is given.
            self._env.seed(int(seed) if seed is not None else int(self.np_random.integers(2**31)))
            self._seeded = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, info = self._env.reset()
        self._t = 0
        return obs.astype(np.float32), {"success": 0.0}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, _terminated, _truncated, info = self._env.step(a)
        self._t += 1
        truncated = self._t >= self.max_episode_steps
        return obs.astype(np.float32), float(reward), False, truncated, {"success": float(info["success"])}

    def close(self):
        self._env.close()
