"""Scripted experts, one module per domain, and the noisy/random variants used for mixed-quality data.

``make_expert(env)`` returns a Policy for the env's task (the env of ``xlram.rl.envs.make_env``, padded
or not). Experts may read privileged simulator state through the env (Atari RAM, MuJoCo physics);
the data they produce is the ordinary observation.
"""

from __future__ import annotations

import importlib

import numpy as np

_EXPERT_MODULES = {
    "metaworld": "xlram.rl.experts.metaworld",
    "dmcontrol": "xlram.rl.experts.dmcontrol",
    "atari": "xlram.rl.experts.atari",
    "darkroom": "xlram.rl.experts.darkroom",
    "robosuite": "xlram.rl.experts.robosuite",
}


class Policy:
    """act(obs) -> action; reset() at the start of every episode."""

    def reset(self) -> None:
        pass

    def act(self, obs):
        raise NotImplementedError


class RandomPolicy(Policy):
    """Uniform random actions from the env's action space, drawn from `rng`."""

    def __init__(self, action_space, rng: np.random.Generator):
        self.space = action_space
        self.rng = rng

    def act(self, obs):
        if hasattr(self.space, "n"):
            return int(self.rng.integers(self.space.n))
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


class NoisyPolicy(Policy):
    """The expert with action noise of strength `noise` in [0, 1].

    Continuous actions: Gaussian noise with standard deviation `noise` (in units of the [-1, 1] range),
    clipped. Discrete actions: ε-greedy with ε = `noise` over the action space. ``noise = 1`` on a
    discrete space is a uniformly random policy that still steps the expert (so stateful experts stay
    consistent).
    """

    def __init__(self, expert: Policy, noise: float, action_space, rng: np.random.Generator):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.expert = expert
        self.noise = float(noise)
        self.space = action_space
        self.rng = rng

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs):
        a = self.expert.act(obs)
        if self.noise == 0.0:
            return a
        if hasattr(self.space, "n"):
            if self.rng.random() < self.noise:
                return int(self.rng.integers(self.space.n))
            return a
        a = np.asarray(a, np.float32) + self.noise * self.rng.standard_normal(self.space.shape).astype(
            np.float32
        )
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def make_expert(env) -> Policy:
    """The scripted expert for `env`'s task (ValueError when that task has none)."""
    base = env.unwrapped
    domain = getattr(base, "domain", None)
    if domain not in _EXPERT_MODULES:
        raise ValueError(f"no scripted expert for env {env!r} (domain {domain!r})")
    return importlib.import_module(_EXPERT_MODULES[domain]).make_expert(base)


def has_expert(task_id: str) -> bool:
    """Whether a scripted expert exists for `task_id` ("domain/task")."""
    domain, task = task_id.split("/", 1)
    if domain not in _EXPERT_MODULES:
        return False
    return task in importlib.import_module(_EXPERT_MODULES[domain]).EXPERT_TASKS
