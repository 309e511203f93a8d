"""robosuite: scripted controllers for Lift and Door, on the end-effector pose.

Actions are deltas for robosuite's default operational-space controller (OSC_POSE, in the robot base
frame, whose axes are the world's): position in units of its 5 cm per-step range, rotation as an
axis-angle in units of its 0.5 rad range, gripper -1 open / +1 close. Both controllers are small state
machines that read poses from the simulator.

* Lift: above the cube, descend, close, lift (and start over if the cube slips); rotation left at zero,
  so the gripper keeps pointing down.
* Door (no latch): the door swings towards the robot about a hinge on its far side, and the handle is a
  bar 10 cm in front of the panel, parallel to it. Grasped top-down, the 20 cm-long hand or the wrist
  above it hits the panel (the panel rises 30 cm above the bar, the gap behind the bar is 6 cm). So the
  gripper is turned to point horizontally at the door, fingers closing vertically: it stops 10 cm in
  front of the bar, moves in until the fingers straddle it, closes on it, and pulls along the door's
  outward normal, which turns with the door, so the hand follows the hinge arc (success at 0.3 rad).
"""

from __future__ import annotations

import numpy as np

from xlram.rl.experts import Policy

EXPERT_TASKS = ("lift", "door")
_STEP = 0.05  # metres per unit of position action
_ROT = 0.5  # radians per unit of rotation action


def _move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * (target - eef) / _STEP, -1.0, 1.0)


def _rotvec(R: np.ndarray) -> np.ndarray:
    """The axis-angle vector of rotation matrix `R` (angle in [0, pi])."""
    from scipy.spatial.transform import Rotation  # a robosuite dependency

    return Rotation.from_matrix(R).as_rotvec()


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


class DoorExpert(Policy):
    """Door: a front grasp of the handle bar, then a pull along the door's normal (see the module doc).

    Reads the handle bar's position and the door's orientation from the simulator, and the gripper's
    pose (the ``gripper0_right_eef`` body, the observation's ``robot0_eef_pos``). Position errors are
    tripled before they become actions (clipped), so the hand closes in on a target in fewer steps.
    """

    standoff = 0.10  # where the approach starts, in front of the bar (m)
    pull = 0.15  # how far ahead of the bar the hand is sent while pulling (m)
    gain = 3.0

    def __init__(self, env):
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.phase, self.count, self.steps, self.sign = "align", 0, 0, None

    def _poses(self):
        sim = self.env.sim.sim  # robosuite rebuilds its simulator on reset: look it up every step
        m, d = sim.model, sim.data
        eef = m.body_name2id("gripper0_right_eef")
        door = d.body_xmat[m.body_name2id("Door_door")].reshape(3, 3)
        normal = -door[:, 1]  # the panel's outward normal, towards the robot
        normal = normal - normal[2] * np.array([0.0, 0.0, 1.0])
        normal /= np.linalg.norm(normal)
        bar = d.geom_xpos[m.geom_name2id("Door_handle")].copy()
        return d.body_xpos[eef].copy(), d.body_xmat[eef].reshape(3, 3).copy(), bar, normal

    def _orientation(self, normal: np.ndarray, up: float) -> np.ndarray:
        """The gripper frame pointing into the door (its z axis along -normal), fingers closing along
        the vertical (its x axis, `up` = +1 or -1)."""
        z = -normal
        x = np.array([0.0, 0.0, up])
        return np.column_stack([x, np.cross(z, x), z])

    def act(self, obs):
        eef, R, bar, normal = self._poses()
        if self.sign is None:  # of the two vertical finger axes, the one the gripper is nearer to
            turn = [np.linalg.norm(_rotvec(self._orientation(normal, s) @ R.T)) for s in (1.0, -1.0)]
            self.sign = 1.0 if turn[0] <= turn[1] else -1.0
        rot = _rotvec(self._orientation(normal, self.sign) @ R.T)
        self.steps += 1
        grip = -1.0
        if self.phase == "align":
            target = bar + self.standoff * normal
            close = np.linalg.norm(target - eef) < 0.01 and np.linalg.norm(rot) < 0.05
            if close or (self.steps > 60 and np.linalg.norm(target - eef) < 0.02):
                self.phase, self.count = "reach", 0
        if self.phase == "reach":
            target = bar
            self.count += 1
            if np.linalg.norm(target - eef) < 0.008 or self.count >= 25:
                self.phase, self.count = "close", 0
        if self.phase == "close":
            target, grip = bar, 1.0
            self.count += 1
            if self.count >= 10:
                self.phase = "pull"
        if self.phase == "pull":
            target, grip = bar + self.pull * normal, 1.0
            if np.linalg.norm(eef - bar) > 0.04:  # lost the handle: back off and grasp again
                self.phase, self.steps = "align", 0
                target, grip = bar + self.standoff * normal, -1.0
        a = np.zeros(7, np.float32)
        a[:3] = _move(eef, target, self.gain)
        a[3:6] = np.clip(rot / _ROT, -1.0, 1.0)
        a[6] = grip
        return a


_EXPERTS = {"lift": LiftExpert, "door": DoorExpert}


def make_expert(env) -> Policy:
    if env.task not in EXPERT_TASKS:
        raise ValueError(f"no scripted robosuite controller for {env.task!r}")
    return _EXPERTS[env.task](env)
