"""Generate the offline datasets: per task, mixed-quality episodes written as a Minari dataset.

Per task, episodes come from the scripted expert, the expert with action noise at several levels,
and a uniformly random policy (the spread of a replay buffer, which return conditioning needs); in
Dark-Room they are the learning histories of a Q-learner instead. Seeds are fixed per task and
episode, so a suite regenerates identically.

Reference returns for normalisation (``ref_min_score``, ``ref_max_score`` in Minari's metadata) are
the mean returns of the task's random and noise-free expert episodes, whose seeds the metadata lists.

Resumable: each task is written atomically (see `xlram.rl.datasets.write_dataset`); a run skips the
tasks whose dataset is already complete, and an interrupted task leaves only a hidden partial
directory, removed on the next run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xlram.rl.conventions import domain_info
from xlram.rl.datasets import (
    DatasetError,
    Episode,
    clean_partial,
    dataset_dir,
    is_complete,
    now_iso,
    write_dataset,
)

# (policy, noise) levels and their share of a task's episodes. Continuous noise is a Gaussian std in
# units of the [-1, 1] action range; discrete noise is ε of ε-greedy.
LEVELS = {
    "continuous": [("expert", 0.0), ("noisy", 0.1), ("noisy", 0.3), ("noisy", 0.6), ("random", 1.0)],
    "discrete": [("expert", 0.0), ("noisy", 0.1), ("noisy", 0.25), ("noisy", 0.5), ("random", 1.0)],
}
SHARES = [0.3, 0.2, 0.2, 0.1, 0.2]

MINI_METAWORLD = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "window-open",
    "window-close",
    "hammer",
)
MINI_DMCONTROL = ("cartpole-swingup", "pendulum-swingup", "point_mass-easy", "reacher-easy")
FULL_DMCONTROL = (
    "cartpole-balance",
    "cartpole-swingup",
    "cartpole-balance_sparse",
    "pendulum-swingup",
    "point_mass-easy",
    "reacher-easy",
    "reacher-hard",
)
ATARI_GAMES = ("pong", "breakout", "freeway")
ROBOSUITE_TASKS = ("lift", "door")

DEFAULT_EPISODES = {
    "mini": {"metaworld": 30, "dmcontrol": 12, "atari": 8, "darkroom": 50, "robosuite": 10},
    "full": {"metaworld": 100, "dmcontrol": 40, "atari": 30, "darkroom": 100, "robosuite": 50},
}
# Atari episodes in the data are cut at this many agent steps (a full expert Pong game is ~9,000).
ATARI_CAP = {"mini": 2500, "full": 10_000}
# Rough steps per episode, for the progress bar's total only.
_TYPICAL_LENGTH = {"metaworld": 200, "dmcontrol": 1000, "atari": 1500, "darkroom": 100, "robosuite": 200}
DARKROOM_REFERENCE_EPISODES = 10


@dataclass
class TaskPlan:
    """What to generate for one task: `episodes` episodes (a Dark-Room learning history of that many
    episodes), each cut at `max_episode_steps` if given, seeds derived from `seed`."""

    task_id: str
    episodes: int
    max_episode_steps: int | None = None
    seed: int = 0
    jpeg: bool = True

    @property
    def domain(self) -> str:
        return self.task_id.split("/", 1)[0]

    def estimated_steps(self) -> int:
        n = _TYPICAL_LENGTH.get(self.domain, 500)
        if self.max_episode_steps:
            n = min(n, self.max_episode_steps)
        return self.episodes * n


def task_seed(task_id: str) -> int:
    """A fixed seed per task (stable across runs and Python versions)."""
    return zlib.crc32(task_id.encode()) % (2**20) * 1000


def robosuite_available() -> bool:
    try:
        import robosuite  # noqa: F401
    except Exception:
        return False
    return True


def suite_plan(
    suite: str, episodes: int | None = None, domains: list[str] | None = None, lossless: bool = False
) -> list[TaskPlan]:
    """The tasks of suite "mini" or "full", with `episodes` per task (default: per domain, see
    DEFAULT_EPISODES), optionally limited to `domains`."""
    from xlram.rl.envs import darkroom, metaworld

    if suite not in DEFAULT_EPISODES:
        raise ValueError(f"unknown suite {suite!r}; choose 'mini' or 'full'")
    if episodes is not None and episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    per = DEFAULT_EPISODES[suite]
    tasks: dict[str, list[str]] = {
        "metaworld": list(MINI_METAWORLD if suite == "mini" else metaworld.TASKS),
        "dmcontrol": list(MINI_DMCONTROL if suite == "mini" else FULL_DMCONTROL),
        "atari": list(ATARI_GAMES),
        "darkroom": list(darkroom.TRAIN_GOALS),
        "robosuite": list(ROBOSUITE_TASKS) if (suite == "full" and robosuite_available()) else [],
    }
    if domains:
        unknown = sorted(set(domains) - set(tasks))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; known: {sorted(tasks)}")
    plans = []
    for domain, names in tasks.items():
        if domains and domain not in domains:
            continue
        for name in names:
            tid = f"{domain}/{name}"
            cap = ATARI_CAP[suite] if domain == "atari" else None
            plans.append(TaskPlan(tid, episodes or per[domain], cap, task_seed(tid), jpeg=not lossless))
    return plans


def allocate_levels(n: int, action_kind: str) -> list[tuple[str, float]]:
    """The (policy, noise) of each of `n` episodes: SHARES of LEVELS, at least one expert and (n ≥ 2)
    one random episode, so that both reference returns exist."""
    levels = LEVELS[action_kind]
    counts = [int(round(s * n)) for s in SHARES]
    counts[0] = max(counts[0], 1)
    if n >= 2:
        counts[-1] = max(counts[-1], 1)
    while sum(counts) > n:  # trim from the middle levels first, then the expert share
        for i in (3, 2, 1, 0, 4):
            if sum(counts) > n and counts[i] > (1 if i in (0, 4) and n >= 2 else 0):
                counts[i] -= 1
    while sum(counts) < n:
        counts[0] += 1
    out: list[tuple[str, float]] = []
    for (pol, noise), c in zip(levels, counts, strict=True):
        out += [(pol, noise)] * c
    return out[:n]


# ----------------------------------------------------------------------------------------------------
# Rolling out episodes


def run_episode(env, policy, seed: int, max_steps: int | None = None, on_step=None) -> Episode:
    """One episode of `policy` in `env` (compact observations) from `env.reset(seed=seed)`."""
    obs, info = env.reset(seed=seed)
    policy.reset()
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    info_keys = [k for k in ("success", "raw_reward") if k in info]
    infos = {k: [info[k]] for k in info_keys}
    t = 0
    while True:
        a = policy.act(obs)
        obs, r, terminated, truncated, info = env.step(a)
        t += 1
        if max_steps is not None and t >= max_steps and not terminated:
            truncated = True
        observations.append(obs)
        actions.append(a)
        rewards.append(r)
        terms.append(terminated)
        truncs.append(truncated)
        for k in info_keys:
            infos[k].append(info[k])
        if on_step is not None and t % 100 == 0:
            on_step(100)
        if terminated or truncated:
            break
    if on_step is not None and t % 100:
        on_step(t % 100)
    act_arr = np.asarray(actions, np.int64) if np.ndim(actions[0]) == 0 else np.asarray(actions, np.float32)
    ep = Episode(
        observations=np.asarray(observations),
        actions=act_arr,
        rewards=np.asarray(rewards, np.float64),
        terminations=np.asarray(terms, bool),
        truncations=np.asarray(truncs, bool),
        infos={k: np.asarray(v, np.float64) for k, v in infos.items()},
        seed=seed,
    )
    ep.meta["return"] = float(ep.rewards.sum())
    if "success" in infos:
        ep.meta["success"] = float(np.max(infos["success"]))
    if "raw_reward" in infos:
        ep.meta["score"] = float(np.sum(infos["raw_reward"]))
    return ep


def _reference(episodes: list[Episode], policy: str) -> dict:
    sel = [e for e in episodes if e.meta.get("policy") == policy]
    if not sel:
        return {}
    out = {
        f"{policy}_return": float(np.mean([e.meta["return"] for e in sel])),
        f"{policy}_episodes": len(sel),
        f"{policy}_seeds": [int(e.seed) for e in sel],
    }
    if "success" in sel[0].meta:
        out[f"{policy}_success_rate"] = float(np.mean([e.meta["success"] for e in sel]))
    if "score" in sel[0].meta:
        out[f"{policy}_score"] = float(np.mean([e.meta["score"] for e in sel]))
    return out


def collect_task(plan: TaskPlan, on_step=None) -> tuple[list[Episode], dict, object, object, object]:
    """Roll out every episode of `plan`. Returns (episodes, reference figures, obs space, action space,
    env spec)."""
    from xlram.rl.envs import env_spec, make_env

    if plan.domain == "darkroom":
        return _collect_darkroom(plan, on_step)
    from xlram.rl.experts import NoisyPolicy, RandomPolicy, make_expert

    env = make_env(plan.task_id, padded=False)
    kind = domain_info(plan.domain).action_kind
    expert = make_expert(env)
    episodes = []
    for i, (pol, noise) in enumerate(allocate_levels(plan.episodes, kind)):
        seed = plan.seed + i
        rng = np.random.default_rng(seed)
        if pol == "random":
            policy = RandomPolicy(env.action_space, rng)
        else:
            policy = NoisyPolicy(expert, noise, env.action_space, rng)
        ep = run_episode(env, policy, seed, plan.max_episode_steps, on_step)
        ep.meta.update(policy=pol, noise=noise, seed=seed)
        episodes.append(ep)
    reference = {**_reference(episodes, "expert"), **_reference(episodes, "random")}
    spec = env_spec(plan.task_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    return episodes, reference, obs_space, act_space, spec


def _collect_darkroom(plan: TaskPlan, on_step=None):
    from xlram.rl.envs import env_spec, make_env
    from xlram.rl.envs.darkroom import goal_of, optimal_return
    from xlram.rl.experts import RandomPolicy
    from xlram.rl.experts.darkroom import learning_history

    env = make_env(plan.task_id, padded=False)
    history = learning_history(env.task, plan.episodes, np.random.default_rng(plan.seed))
    episodes = []
    for i, h in enumerate(history):
        T = len(h["rewards"])
        trunc = np.zeros(T, bool)
        trunc[-1] = True
        ep = Episode(
            observations=h["observations"],
            actions=h["actions"],
            rewards=h["rewards"].astype(np.float64),
            terminations=np.zeros(T, bool),
            truncations=trunc,
            seed=plan.seed,
        )
        ep.meta.update(
            policy="learner",
            history=0,
            episode_in_history=i,
            seed=plan.seed,
            **{"return": float(h["rewards"].sum())},
        )
        episodes.append(ep)
        if on_step is not None:
            on_step(T)
    # References: the optimum is exact; the random policy's return is measured on fixed seeds.
    seeds = [plan.seed + 500_000 + k for k in range(DARKROOM_REFERENCE_EPISODES)]
    rand = [
        run_episode(env, RandomPolicy(env.action_space, np.random.default_rng(s)), s).meta["return"]
        for s in seeds
    ]
    reference = {
        "expert_return": float(optimal_return(goal_of(env.task))),
        "expert_episodes": 1,
        "expert_seeds": [],
        "random_return": float(np.mean(rand)),
        "random_episodes": len(seeds),
        "random_seeds": seeds,
        "learner_first_return": float(episodes[0].meta["return"]),
        "learner_last_return": float(np.mean([e.meta["return"] for e in episodes[-5:]])),
    }
    return episodes, reference, env.observation_space, env.action_space, env_spec(plan.task_id)


def generate_task(plan: TaskPlan, out_root: str | Path, on_step=None) -> dict:
    """Collect and write one task's dataset; returns a summary (steps, seconds, references)."""
    t0 = time.perf_counter()
    episodes, reference, obs_space, act_space, spec = collect_task(plan, on_step)
    collect_s = time.perf_counter() - t0
    info = domain_info(plan.domain)
    domain, task = plan.task_id.split("/", 1)
    xmeta = {
        "domain": domain,
        "task": task,
        "reward_scale": info.reward_scale,
        "clip_rewards": info.clip_rewards,
        "obs_kind": info.obs_kind,
        "action_kind": info.action_kind,
        "episodes": plan.episodes,
        "max_episode_steps": plan.max_episode_steps,
        "seed": plan.seed,
        "generated_at": now_iso(),
        "reference": reference,
        "reference_episodes": reference.get("expert_episodes", 0),
        "levels": [list(x) for x in (LEVELS[info.action_kind] if domain != "darkroom" else [])],
    }
    path = dataset_dir(out_root, plan.task_id)
    write_dataset(
        path,
        plan.task_id,
        episodes,
        observation_space=obs_space,
        action_space=act_space,
        xlram_meta=xmeta,
        ref_min_score=reference.get("random_return"),
        ref_max_score=reference.get("expert_return"),
        env_spec=spec,
        jpeg_encoding=plan.jpeg and info.obs_kind == "image",
    )
    steps = sum(len(e) for e in episodes)
    return {
        "task": plan.task_id,
        "domain": domain,
        "episodes": len(episodes),
        "steps": steps,
        "collect_s": collect_s,
        "seconds": time.perf_counter() - t0,
        "reference": reference,
        "path": str(path),
    }


# ----------------------------------------------------------------------------------------------------
# A whole suite, resumable, in parallel, with a progress bar


@dataclass
class SuiteReport:
    done: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def throughput(self) -> dict[str, dict]:
        """Per domain: steps, summed worker seconds, steps per worker-second."""
        out: dict[str, dict] = {}
        for d in self.done:
            o = out.setdefault(d["domain"], {"tasks": 0, "steps": 0, "worker_s": 0.0})
            o["tasks"] += 1
            o["steps"] += d["steps"]
            o["worker_s"] += d["seconds"]
        for o in out.values():
            o["steps_per_s"] = o["steps"] / o["worker_s"] if o["worker_s"] > 0 else float("nan")
        return out


def _worker(plan: TaskPlan, out_root: str, queue) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    on_step = (lambda n: queue.put(n)) if queue is not None else None
    return generate_task(plan, out_root, on_step)


def generate_suite(
    plans: list[TaskPlan], out_root: str | Path, workers: int = 1, progress: bool = True, stream=None
) -> SuiteReport:
    """Generate every plan whose dataset is not already complete under `out_root`."""
    from tqdm import tqdm

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    stream = stream or sys.stderr
    report = SuiteReport()
    todo = []
    for plan in plans:
        path = dataset_dir(out_root, plan.task_id)
        clean_partial(path.parent, path.name)
        if path.exists():
            if is_complete(path):
                report.skipped.append(plan.task_id)
                continue
            raise DatasetError(
                f"{path} exists but is not a complete dataset (corrupt or written by something "
                f"else); remove it and run again"
            )
        todo.append(plan)
    # Longest tasks first, so that the pool does not end on one long straggler.
    todo.sort(key=lambda p: -p.estimated_steps())
    total = sum(p.estimated_steps() for p in todo)
    t0 = time.perf_counter()
    bar = tqdm(
        total=total,
        unit="step",
        unit_scale=True,
        disable=not progress,
        file=stream,
        smoothing=0.05,
        desc=f"{len(todo)} tasks",
    )

    def finished(summary: dict, plan: TaskPlan) -> None:
        report.done.append(summary)
        bar.set_postfix_str(f"done {plan.task_id}", refresh=False)
        bar.set_description(f"{len(report.done)}/{len(todo)} tasks")

    try:
        if workers <= 1 or len(todo) <= 1:
            for plan in todo:
                try:
                    finished(generate_task(plan, out_root, bar.update), plan)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # one broken task must not stop the others
                    report.failed[plan.task_id] = f"{type(e).__name__}: {e}"
        else:
            _run_pool(todo, out_root, workers, bar, finished, report)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
        write_manifest(out_root, report)
    return report


def _run_pool(todo, out_root, workers, bar, finished, report) -> None:
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # simulators and their threads do not survive fork reliably
    manager = ctx.Manager()
    q = manager.Queue()
    try:
        # Leaving the with-block terminates the workers: on Ctrl-C nothing waits for running tasks
        # (their partial directories are removed by them, or by the next run).
        with ctx.Pool(workers) as pool:
            pending = {pool.apply_async(_worker, (plan, str(out_root), q)): plan for plan in todo}
            while pending:
                for res in [r for r in pending if r.ready()]:
                    plan = pending.pop(res)
                    try:
                        finished(res.get(), plan)
                    except Exception as e:
                        report.failed[plan.task_id] = f"{type(e).__name__}: {e}"
                _drain(q, bar, queue_mod)
                time.sleep(0.2)
            _drain(q, bar, queue_mod)
    finally:
        manager.shutdown()


def _drain(q, bar, queue_mod) -> None:
    n = 0
    while True:
        try:
            n += q.get_nowait()
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)


def write_manifest(out_root: Path, report: SuiteReport) -> None:
    """Record what the last run did in OUT/xlram_generation.json (atomically), merged with earlier runs."""
    path = Path(out_root) / "xlram_generation.json"
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
    tasks = old.get("tasks", {})
    for d in report.done:
        tasks[d["task"]] = {k: d[k] for k in ("domain", "episodes", "steps", "seconds", "collect_s")}
    runs = old.get("runs", [])
    runs.append(
        {
            "finished_at": now_iso(),
            "seconds": report.seconds,
            "generated": len(report.done),
            "skipped": len(report.skipped),
            "failed": report.failed,
            "throughput": report.throughput(),
        }
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"tasks": tasks, "runs": runs}, indent=1))
    os.replace(tmp, path)
