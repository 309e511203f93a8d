"""Environments of every domain under one naming scheme, ``"domain/task"``.

>>> env = make_env("metaworld/reach")        # obs (204,) float32, action Box(-1, 1, (4,))
>>> env = make_env("atari/pong")             # obs (64, 64, 3) uint8, Discrete(18)

``make_env(..., padded=True)`` (the default) gives state observations zero-padded to the shared 204
(SPEC section 5); ``padded=False`` gives the compact vector that datasets store (the loader pads it).
Simulators are imported only when an env of their domain is made.
"""

from __future__ import annotations

import importlib

from xlram.rl.envs.base import UnknownTaskError, check_task

DOMAIN_MODULES: dict[str, str] = {
    "metaworld": "xlram.rl.envs.metaworld",
    "dmcontrol": "xlram.rl.envs.dmcontrol",
    "atari": "xlram.rl.envs.atari",
    "darkroom": "xlram.rl.envs.darkroom",
    "robosuite": "xlram.rl.envs.robosuite",
}
_ENV_CLASSES = {
    "metaworld": "MetaWorldEnv",
    "dmcontrol": "DMControlEnv",
    "atari": "AtariEnv",
    "darkroom": "DarkRoomEnv",
    "robosuite": "RobosuiteEnv",
}

__all__ = [
    "DOMAIN_MODULES",
    "UnknownTaskError",
    "domain_module",
    "env_spec",
    "list_tasks",
    "make_env",
    "parse_task_id",
]


def domain_module(domain: str):
    """The module of `domain` (its TASKS, HELD_OUT and env class)."""
    if domain not in DOMAIN_MODULES:
        check_task("domain", domain, DOMAIN_MODULES)
    return importlib.import_module(DOMAIN_MODULES[domain])


def parse_task_id(task_id: str) -> tuple[str, str]:
    """ "domain/task" -> (domain, task), checking both names (UnknownTaskError otherwise)."""
    if not isinstance(task_id, str) or "/" not in task_id:
        raise UnknownTaskError(f"task ids look like 'domain/task' (e.g. 'metaworld/reach'), got {task_id!r}")
    domain, task = task_id.split("/", 1)
    mod = domain_module(domain)
    check_task(domain, task, mod.TASKS)
    return domain, task


def list_tasks(domain: str | None = None) -> list[str]:
    """All task ids, or those of one domain."""
    domains = [domain] if domain is not None else list(DOMAIN_MODULES)
    return [f"{d}/{t}" for d in domains for t in domain_module(d).TASKS]


def make_env(task_id: str, *, padded: bool = True, seed: int | None = None, **kwargs):
    """A gymnasium env for `task_id`. State observations are padded to 204 unless ``padded=False``;
    `seed`, when given, seeds the first reset's generator (later resets continue from it)."""
    domain, task = parse_task_id(task_id)
    cls = getattr(domain_module(domain), _ENV_CLASSES[domain])
    env = cls(task, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
    if padded and len(env.observation_space.shape) == 1:
        from xlram.rl.envs.base import PadState

        env = PadState(env)
    return env


def env_spec(task_id: str, **kwargs):
    """A gymnasium EnvSpec that rebuilds the compact (unpadded) env of `task_id`; datasets store it so
    that Minari's `recover_environment()` works."""
    from gymnasium.envs.registration import EnvSpec

    domain, task = parse_task_id(task_id)
    safe = task.replace("/", "-")
    return EnvSpec(
        id=f"xlram/{domain}-{safe}-v0",
        entry_point="xlram.rl.envs:make_env",
        kwargs={"task_id": task_id, "padded": False, **kwargs},
        disable_env_checker=True,
    )
