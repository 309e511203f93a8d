"""robosuite: a scripted pick-up controller for Lift, on end-effector positions.

Actions are deltas for robosuite's operational-space controller: position in units of its 5 cm
per-step range (rotation left at zero, so the gripper keeps pointing down), gripper -1 open / +1 close.
The controller is a small state machine: above the cube, descend, close, lift (and start over if the
cube slips). Door has an environment but no controller yet: a top-down grasp collides with the door
panel, and a side grasp needs orientation control that is not written.
"""

from __future__ import annotations

import numpy as np

from xlram.rl.experts import Policy

EXPERT_TASKS = ("lift",)
_STEP = 0.05  # metres per unit of position action


def _move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * (target - eef) / _STEP, -1.0, 1.0)


class LiftExpert(Policy):
    def __init__(self, env):
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.phase = "above"
        self.closing = 0

    def act(self, obs):
        o = self.env.last_observation
        eef, cube = np.asarray(o["robot0_eef_pos"]), np.asarray(o["cube_pos"])
        grip = -1.0
        if self.phase == "above":
            target = cube + np.array([0.0, 0.0, 0.06])
            if np.linalg.norm((eef - target)[:2]) < 0.008 and abs(eef[2] - target[2]) < 0.02:
                self.phase = "descend"
        if self.phase == "descend":
            target = cube + np.array([0.0, 0.0, -0.005])
            if abs(eef[2] - target[2]) < 0.008:
                self.phase = "close"
        if self.phase == "close":
            target, grip = cube + np.array([0.0, 0.0, -0.005]), 1.0
            self.closing += 1
            if self.closing >= 8:
                self.phase = "lift"
        if self.phase == "lift":
            target, grip = np.array([cube[0], cube[1], 1.05]), 1.0
            if np.linalg.norm((eef - cube)[:2]) > 0.03:  # dropped it: start again
                self.reset()
        a = np.zeros(7, np.float32)
        a[:3] = _move(eef, target)
        a[6] = grip
        return a


def make_expert(env) -> Policy:
    if env.task not in EXPERT_TASKS:
        raise ValueError(f"no scripted robosuite controller for {env.task!r}")
    return LiftExpert(env)
