"""Dark-Room 10×10, the grid world of the in-context RL experiments (a NumPy re-implementation).

The agent starts in the middle of an empty, dark 10×10 room and must find an unobserved goal cell.
Observation: its own position ``(x, y) / 9`` (2 floats, padded to 204 by the shared convention).
Actions: 5 (0 stay, 1 up, 2 down, 3 left, 4 right), indices into the shared discrete action set.
Reward: 1 for every step that ends on the goal; the episode never ends early and lasts 100 steps, so
the best return is ``101 - d`` for a goal ``d`` moves away.

There is one task per goal cell, ``goal-X-Y``; a fixed permutation puts 80 goals in TRAIN_GOALS and
holds out 20 (HELD_OUT_GOALS), as in the reference.
"""

from __future__ import annotations

import numpy as np

from xlram.rl.envs.base import TaskEnv, require

DOMAIN = "darkroom"
SIZE = 10
EPISODE_STEPS = 100
START = (SIZE // 2, SIZE // 2)
NUM_ACTIONS = 5
# (dx, dy) per action: stay, up, down, left, right
MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], np.int64)

TASKS: tuple[str, ...] = tuple(f"goal-{x}-{y}" for y in range(SIZE) for x in range(SIZE))
_perm = np.random.default_rng(12345).permutation(len(TASKS))
TRAIN_GOALS: tuple[str, ...] = tuple(TASKS[i] for i in sorted(_perm[:80]))
HELD_OUT_GOALS: tuple[str, ...] = tuple(TASKS[i] for i in sorted(_perm[80:]))
HELD_OUT = HELD_OUT_GOALS
del _perm


def goal_of(task: str) -> tuple[int, int]:
    """ "goal-X-Y" -> (X, Y)."""
    _, x, y = task.split("-")
    return int(x), int(y)


def optimal_return(goal: tuple[int, int], start: tuple[int, int] = START, steps: int = EPISODE_STEPS) -> int:
    """The best return: the goal is reached after d moves and held for the remaining steps."""
    d = abs(goal[0] - start[0]) + abs(goal[1] - start[1])
    return max(0, steps - d + 1) if d > 0 else steps


def step_position(pos: np.ndarray, action: int) -> np.ndarray:
    """The next cell: move by the action's offset, staying inside the room."""
    return np.clip(pos + MOVES[action], 0, SIZE - 1)


class DarkRoomEnv(TaskEnv):
    """One goal of Dark-Room. obs (2,) float32 in [0, 1], Discrete(5), 100 steps per episode."""

    def __init__(self, task: str):
        super().__init__(DOMAIN, task, TASKS)
        gym = require("gymnasium")
        self.goal = np.array(goal_of(task), np.int64)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self.max_episode_steps = EPISODE_STEPS
        self.pos = np.array(START, np.int64)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return (self.pos / (SIZE - 1)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.pos = np.array(START, np.int64)
        self._t = 0
        return self._obs(), {"position": self.pos.copy()}

    def step(self, action):
        a = int(action)
        if not 0 <= a < NUM_ACTIONS:
            raise ValueError(f"{self.task_id}: action must be in [0, {NUM_ACTIONS}), got {action!r}")
        self.pos = step_position(self.pos, a)
        self._t += 1
        reward = float(np.array_equal(self.pos, self.goal))
        return self._obs(), reward, False, self._t >= EPISODE_STEPS, {"position": self.pos.copy()}
