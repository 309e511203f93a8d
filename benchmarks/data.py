"""`xlram bench data`: quality of the scripted experts, Dark-Room learning histories, generation and
sampler throughput.

Rows (SPEC section 6):
* per domain and task: ``success_rate`` (Meta-World and robosuite, the expert's any-step success),
  ``expert_return`` and ``random_return`` over the same fixed seeds (Atari: game points;
  ``expert_return_clipped`` too);
* Dark-Room: mean over the training (and held-out) goals of the optimal and random returns and of the
  learner's first and last episode returns (``learner_first_return``, ``learner_last_return``);
* ``steps_per_s`` per domain: generation throughput of one worker (rollouts plus the Minari write);
* ``ms_per_batch`` per domain: the training sampler (batch 32, context 50).

``--quick`` evaluates the mini suite's tasks with few episodes (a few minutes); the full run evaluates
every task with an expert (all 50 Meta-World tasks) with more episodes. robosuite (Lift, Door) is
evaluated in both when it is installed.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np


def _evaluate(task_id: str, episodes: int, seed: int, max_steps: int | None = None) -> dict:
    """Expert and random policies on the same seeds: mean returns (and success, game score)."""
    from xlram.rl.envs import make_env
    from xlram.rl.experts import RandomPolicy, make_expert
    from xlram.rl.generate import run_episode

    env = make_env(task_id, padded=False)
    expert = make_expert(env)
    out: dict[str, list] = {"expert": [], "random": []}
    steps = 0
    t0 = time.perf_counter()
    for k in range(episodes):
        s = seed + k
        for name, pol in (
            ("expert", expert),
            ("random", RandomPolicy(env.action_space, np.random.default_rng(s))),
        ):
            ep = run_episode(env, pol, s, max_steps)
            out[name].append(ep.meta)
            steps += len(ep)
    env.close()
    res = {"seconds": time.perf_counter() - t0, "steps": steps}
    for name, metas in out.items():
        res[f"{name}_return"] = float(np.mean([m["return"] for m in metas]))
        if "success" in metas[0]:
            res[f"{name}_success"] = float(np.mean([m["success"] for m in metas]))
        if "score" in metas[0]:
            res[f"{name}_score"] = float(np.mean([m["score"] for m in metas]))
    return res


def _expert_rows(quick: bool) -> list[dict]:
    from xlram.rl.envs import metaworld as mw
    from xlram.rl.generate import (
        ATARI_GAMES,
        FULL_DMCONTROL,
        MINI_DMCONTROL,
        MINI_METAWORLD,
        ROBOSUITE_TASKS,
        robosuite_available,
        task_seed,
    )

    rows = []
    plan = []
    mw_tasks = MINI_METAWORLD if quick else mw.TASKS
    plan += [(f"metaworld/{t}", 5 if quick else 20) for t in mw_tasks]
    dmc_tasks = list(MINI_DMCONTROL) + ["cartpole-balance"] if quick else FULL_DMCONTROL
    plan += [(f"dmcontrol/{t}", 3 if quick else 10) for t in dmc_tasks]
    plan += [(f"atari/{g}", 1 if quick else 3) for g in ATARI_GAMES]
    if robosuite_available():
        plan += [(f"robosuite/{t}", 5 if quick else 20) for t in ROBOSUITE_TASKS]
    else:
        print("  robosuite is not installed: no robosuite rows", flush=True)
    for task_id, n in plan:
        domain, task = task_id.split("/", 1)
        r = _evaluate(task_id, n, seed=10_000_000 + task_seed(task_id) // 1000)
        base = {
            "domain": domain,
            "task": task,
            "episodes": n,
            "seed": 10_000_000 + task_seed(task_id) // 1000,
        }
        if domain == "atari":
            rows.append(
                {"metric": "expert_return", "value": r["expert_score"], **base, "unit": "game points"}
            )
            rows.append(
                {"metric": "random_return", "value": r["random_score"], **base, "unit": "game points"}
            )
            rows.append({"metric": "expert_return_clipped", "value": r["expert_return"], **base})
        else:
            rows.append({"metric": "expert_return", "value": r["expert_return"], **base})
            rows.append({"metric": "random_return", "value": r["random_return"], **base})
        if "expert_success" in r:
            rows.append({"metric": "success_rate", "value": r["expert_success"], **base})
        print(
            f"  {task_id:36s} expert {r['expert_return']:9.1f} random {r['random_return']:9.1f}"
            + (f" success {r['expert_success']:.2f}" if "expert_success" in r else "")
            + (f" score {r['expert_score']:.1f}" if "expert_score" in r else "")
            + f"  ({r['steps']} steps, {r['seconds']:.0f} s)",
            flush=True,
        )
    return rows


def _darkroom_rows(quick: bool) -> list[dict]:
    from xlram.rl.envs import darkroom as dr
    from xlram.rl.experts.darkroom import learning_history
    from xlram.rl.generate import task_seed

    rows = []
    n_eps = 50 if quick else 100
    for split, goals in (("train", dr.TRAIN_GOALS), ("heldout", dr.HELD_OUT_GOALS)):
        first, last, opt, rand = [], [], [], []
        rng_r = np.random.default_rng(7)
        for g in goals:
            h = learning_history(g, n_eps, np.random.default_rng(task_seed(f"darkroom/{g}")))
            rets = [float(e["rewards"].sum()) for e in h]
            first.append(rets[0])
            last.append(float(np.mean(rets[-5:])))
            opt.append(dr.optimal_return(dr.goal_of(g)))
            # random walk of 100 steps from the start
            pos = np.array(dr.START)
            goal = np.array(dr.goal_of(g))
            R = 0.0
            for _ in range(dr.EPISODE_STEPS):
                pos = dr.step_position(pos, int(rng_r.integers(dr.NUM_ACTIONS)))
                R += float(np.array_equal(pos, goal))
            rand.append(R)
        base = {
            "domain": "darkroom",
            "task": f"{split}-goals",
            "goals": len(goals),
            "history_episodes": n_eps,
        }
        rows += [
            {"metric": "expert_return", "value": float(np.mean(opt)), **base},
            {"metric": "random_return", "value": float(np.mean(rand)), **base},
            {"metric": "learner_first_return", "value": float(np.mean(first)), **base},
            {"metric": "learner_last_return", "value": float(np.mean(last)), **base},
        ]
        print(
            f"  darkroom {split:8s} optimal {np.mean(opt):.1f} random {np.mean(rand):.1f} learner first "
            f"{np.mean(first):.1f} -> last {np.mean(last):.1f}",
            flush=True,
        )
    return rows


def _throughput_rows(quick: bool) -> list[dict]:
    """Generate one small task per domain into a temporary directory: generation steps/s of one worker,
    then the sampler's time per batch on what was written."""
    from xlram.rl.datasets import load_datasets
    from xlram.rl.generate import TaskPlan, generate_task, task_seed
    from xlram.rl.sampler import SegmentSampler

    rows = []
    jobs = [
        ("metaworld/reach", 10),
        ("dmcontrol/cartpole-swingup", 4),
        ("atari/breakout", 4),
        ("darkroom/goal-2-7", 50),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for tid, n in jobs:
            cap = 2500 if tid.startswith("atari") else None
            s = generate_task(TaskPlan(tid, n, cap, task_seed(tid)), tmp)
            domain = tid.split("/")[0]
            rows.append(
                {
                    "metric": "steps_per_s",
                    "value": s["steps"] / s["seconds"],
                    "domain": domain,
                    "task": tid,
                    "stage": "generate",
                    "steps": s["steps"],
                    "workers": 1,
                }
            )
            print(
                f"  generate {tid:28s} {s['steps']:6d} steps {s['steps'] / s['seconds']:7.0f} steps/s",
                flush=True,
            )
        sampler = SegmentSampler(load_datasets(tmp), context=50, batch_size=32, seed=0)
        for d in sampler.domains:
            sampler.sample(d)
            reps = 20 if d == "atari" else 100
            t0 = time.perf_counter()
            for _ in range(reps):
                sampler.sample(d)
            ms = (time.perf_counter() - t0) / reps * 1e3
            rows.append(
                {
                    "metric": "ms_per_batch",
                    "value": ms,
                    "domain": d,
                    "task": "sampler",
                    "batch": 32,
                    "context": 50,
                }
            )
            print(f"  sampler {d:10s} {ms:6.2f} ms per batch (32 x 50)", flush=True)
    return rows


def run(args) -> list[dict]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    quick = bool(getattr(args, "quick", False))
    rows = []
    rows += _expert_rows(quick)
    rows += _darkroom_rows(quick)
    rows += _throughput_rows(quick)
    return rows
