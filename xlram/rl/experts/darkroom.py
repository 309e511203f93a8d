"""Dark-Room: the shortest-path expert (reference returns) and the learning agent whose histories make
the in-context RL data.

The learner is tabular Q-learning with ε-greedy exploration, ε decaying linearly from 1 to 0.05 over
the history, so each history runs from random behaviour to near-optimal behaviour, which is what an
in-context learner has to distil (Algorithm Distillation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlram.rl.envs.darkroom import EPISODE_STEPS, NUM_ACTIONS, SIZE, START, TASKS, goal_of, step_position
from xlram.rl.experts import Policy

EXPERT_TASKS = TASKS


class ShortestPathExpert(Policy):
    """Move along x, then along y, then stay on the goal (optimal: every path of d moves is)."""

    def __init__(self, env):
        self.env = env

    def act(self, obs):
        pos, goal = self.env.pos, self.env.goal
        if pos[0] < goal[0]:
            return 4
        if pos[0] > goal[0]:
            return 3
        if pos[1] < goal[1]:
            return 1
        if pos[1] > goal[1]:
            return 2
        return 0


def make_expert(env) -> Policy:
    return ShortestPathExpert(env)


@dataclass
class QLearningConfig:
    """Tabular Q-learning: learning rate, discount, and ε decaying linearly over the history."""

    alpha: float = 0.3
    gamma: float = 0.95
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_fraction: float = 0.6  # fraction of the history over which ε decays


def learning_history(
    task: str, n_episodes: int, rng: np.random.Generator, config: QLearningConfig | None = None
) -> list[dict[str, np.ndarray]]:
    """Run a fresh Q-learner on `task` for `n_episodes` episodes of Dark-Room; return the episodes in
    order, each a dict with observations (T+1, 2) float32, actions (T,) int64, rewards (T,) float32.

    The dynamics are those of ``DarkRoomEnv`` (same step function), run here without the gymnasium
    wrapper because the learner needs thousands of episodes per second.
    """
    cfg = config or QLearningConfig()
    goal = np.array(goal_of(task), np.int64)
    q = np.zeros((SIZE * SIZE, NUM_ACTIONS))
    decay_eps = max(1, int(cfg.eps_decay_fraction * n_episodes))
    episodes = []
    for ep in range(n_episodes):
        frac = min(1.0, ep / decay_eps)
        eps = cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)
        pos = np.array(START, np.int64)
        obs = np.empty((EPISODE_STEPS + 1, 2), np.float32)
        acts = np.empty(EPISODE_STEPS, np.int64)
        rews = np.empty(EPISODE_STEPS, np.float32)
        obs[0] = pos / (SIZE - 1)
        for t in range(EPISODE_STEPS):
            s = pos[1] * SIZE + pos[0]
            if rng.random() < eps:
                a = int(rng.integers(NUM_ACTIONS))
            else:
                row = q[s]
                a = int(rng.choice(np.flatnonzero(row == row.max())))
            pos = step_position(pos, a)
            r = float(pos[0] == goal[0] and pos[1] == goal[1])
            s2 = pos[1] * SIZE + pos[0]
            q[s, a] += cfg.alpha * (r + cfg.gamma * q[s2].max() - q[s, a])
            obs[t + 1] = pos / (SIZE - 1)
            acts[t] = a
            rews[t] = r
        episodes.append({"observations": obs, "actions": acts, "rewards": rews})
    return episodes
