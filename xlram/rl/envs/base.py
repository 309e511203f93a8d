"""What every domain's environment shares: task-name checks, lazy imports with a useful error, padding."""

from __future__ import annotations

import difflib
import importlib

import gymnasium as gym
import numpy as np

from xlram.rl.conventions import STATE_DIM, pad_state


class UnknownTaskError(ValueError):
    """A task or domain name that no domain knows."""


def check_task(domain: str, task: str, known) -> None:
    """Raise UnknownTaskError naming the close matches when `task` is not one of `known`."""
    if task in known:
        return
    close = difflib.get_close_matches(task, list(known), n=3)
    hint = f"; did you mean {', '.join(repr(f'{domain}/{c}') for c in close)}?" if close else ""
    raise UnknownTaskError(
        f"unknown {domain} task {task!r}{hint} (known: {len(known)} tasks, "
        f"see xlram.rl.envs.list_tasks({domain!r}))"
    )


def require(module: str, extra: str = "rl"):
    """Import `module`, or raise ImportError telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module!r} is needed here but could not be imported ({e}); "
            f"install the optional dependencies with: pip install 'xlram[{extra}]'"
        ) from e


class TaskEnv(gym.Env):
    """Base of the domain environments: knows its `domain`, `task` and `task_id` ("domain/task")."""

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, known):
        check_task(domain, task, known)
        self.domain = domain
        self.task = task

    @property
    def task_id(self) -> str:
        return f"{self.domain}/{self.task}"


class PadState(gym.ObservationWrapper):
    """Zero-pad a state-vector observation (d,) to the shared (STATE_DIM,) float32 vector."""

    def __init__(self, env: gym.Env, dim: int = STATE_DIM):
        super().__init__(env)
        (d,) = env.observation_space.shape
        if d > dim:
            raise ValueError(f"{getattr(env, 'task_id', env)}: observation has {d} dims, more than {dim}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self._dim = dim

    def observation(self, observation):
        return pad_state(observation, self._dim)
