"""DMControl: scripted controllers written from the physics, not learned.

* cartpole-balance / -swingup: energy pumping on the pole (the cart's acceleration is chosen to raise
  the pole's energy towards that of the upright rest state), then an LQR controller, computed from the
  MuJoCo model linearised at the upright state, takes over near the top and keeps the cart centred.
* pendulum-swingup: torque in the direction of motion until the energy reaches the upright level
  (the motor is too weak to lift the pole directly), then LQR at the top.
* point_mass-easy: LQR towards the target (a linear plant).
* reacher-easy / -hard: two-link inverse kinematics for the target, then joint-space PD control.

Linearisations use `mujoco.mjd_transitionFD` on a copy of the task's physics; LQR gains come from the
discrete algebraic Riccati equation (SciPy).
"""

from __future__ import annotations

import numpy as np

from xlram.rl.experts import Policy

EXPERT_TASKS = (
    "cartpole-balance",
    "cartpole-swingup",
    "cartpole-balance_sparse",
    "cartpole-swingup_sparse",
    "pendulum-swingup",
    "point_mass-easy",
    "reacher-easy",
    "reacher-hard",
)


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def linearise(physics, qpos: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Discrete-time (A, B) of one physics step around (qpos, qvel = 0, ctrl = 0): x = (dq, qvel)."""
    import mujoco

    phys = physics.copy(share_model=False)
    m, d = phys.model.ptr, phys.data.ptr
    # finite differences are not implemented for RK4; semi-implicit Euler at the same step is close
    m.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
    d.qpos[:] = qpos
    d.qvel[:] = 0.0
    d.ctrl[:] = 0.0
    mujoco.mj_forward(m, d)
    nx, nu = 2 * m.nv + m.na, m.nu
    A = np.zeros((nx, nx))
    B = np.zeros((nx, nu))
    mujoco.mjd_transitionFD(m, d, eps, True, A, B, None, None)
    return A, B


def lqr_gain(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray) -> np.ndarray:
    """K of the infinite-horizon discrete LQR, u = -K x."""
    from scipy.linalg import solve_discrete_are

    P = solve_discrete_are(A, B, Q, R)
    return np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)


class _Physics(Policy):
    def __init__(self, env):
        self.env = env

    @property
    def physics(self):
        return self.env.physics


class CartpoleExpert(_Physics):
    """Energy swing-up + LQR. State: cart x, pole angle θ (0 = upright), their velocities."""

    # pole: mass 0.1, centre of mass 0.5 from the hinge, inertia about the hinge 0.0094 + 0.1·0.5²
    def __init__(self, env):
        super().__init__(env)
        m = self.physics.model
        pole = m.nbody - 1
        self.mgl = float(m.body_mass[pole] * -m.opt.gravity[2] * m.body_ipos[pole][2])
        self.inertia = float(m.body_inertia[pole][1] + m.body_mass[pole] * m.body_ipos[pole][2] ** 2)
        A, B = linearise(self.physics, np.zeros(m.nq))
        self.K = lqr_gain(A, B, np.diag([1.0, 5.0, 0.1, 0.1]), np.array([[0.5]]))

    def act(self, obs):
        qpos, qvel = self.physics.data.qpos, self.physics.data.qvel
        x, th = float(qpos[0]), _wrap(float(qpos[1]))
        xd, thd = float(qvel[0]), float(qvel[1])
        if np.cos(th) > 0.85:
            u = -self.K @ np.array([x, th, xd, thd])
            return np.clip(u, -1, 1).astype(np.float32)
        energy = 0.5 * self.inertia * thd**2 + self.mgl * (np.cos(th) - 1.0)
        # Accelerating the cart changes the pole's energy at a rate ∝ θ̇ cos θ; push to raise it to 0.
        pump = -2.0 * (0.0 - energy) / self.mgl * np.sign(thd * np.cos(th) + 1e-9)
        u = pump - 0.3 * x - 0.1 * xd
        return np.clip([u], -1, 1).astype(np.float32)


class PendulumExpert(_Physics):
    """Energy pumping (torque along the motion) then LQR at the top."""

    def __init__(self, env):
        super().__init__(env)
        m = self.physics.model
        self.mgl = float(m.body_mass[1] * -m.opt.gravity[2] * m.body_ipos[1][2])
        self.inertia = float(m.body_inertia[1][1] + m.body_mass[1] * m.body_ipos[1][2] ** 2)
        A, B = linearise(self.physics, np.zeros(m.nq))
        self.K = lqr_gain(A, B, np.diag([10.0, 1.0]), np.array([[0.1]]))

    def act(self, obs):
        th = _wrap(float(self.physics.data.qpos[0]))
        thd = float(self.physics.data.qvel[0])
        if np.cos(th) > 0.95:
            u = -self.K @ np.array([th, thd])
            return np.clip(u, -1, 1).astype(np.float32)
        energy = 0.5 * self.inertia * thd**2 + self.mgl * (np.cos(th) - 1.0)
        u = np.sign(thd if abs(thd) > 1e-3 else 1.0) * (1.0 if energy < 0 else -1.0)
        return np.array([u], np.float32)


class PointMassExpert(_Physics):
    """LQR regulation of the (linear) point mass onto the target."""

    def __init__(self, env):
        super().__init__(env)
        m = self.physics.model
        A, B = linearise(self.physics, np.zeros(m.nq))
        self.K = lqr_gain(A, B, np.diag([1000.0, 1000.0, 1.0, 1.0]), np.eye(2) * 0.1)

    def act(self, obs):
        target = self.physics.named.data.geom_xpos["target"][:2]
        x = np.concatenate([self.physics.data.qpos - target, self.physics.data.qvel])
        return np.clip(-self.K @ x, -1, 1).astype(np.float32)


class ReacherExpert(_Physics):
    """Two-link inverse kinematics for the target, then joint-space PD control.

    Of the two elbow solutions the one nearer the current elbow angle is taken, so the arm never
    swings through a singular pose; the shoulder error is wrapped to (-π, π].
    """

    def __init__(self, env, kp: float = 8.0, kd: float = 0.6):
        super().__init__(env)
        m = self.physics.model
        self.l1 = float(np.linalg.norm(m.body_pos[m.name2id("hand", "body")][:2]))
        self.l2 = float(np.linalg.norm(m.body_pos[m.name2id("finger", "body")][:2]))
        self.q2_max = float(m.jnt_range[1][1])
        self.kp, self.kd = kp, kd

    def act(self, obs):
        phys = self.physics
        q, qd = phys.data.qpos.copy(), phys.data.qvel.copy()
        x, y = phys.named.data.geom_xpos["target"][:2]
        r2 = x * x + y * y
        c2 = np.clip((r2 - self.l1**2 - self.l2**2) / (2 * self.l1 * self.l2), -1.0, 1.0)
        best = None
        for s in (1.0, -1.0):
            q2 = float(np.clip(s * np.arccos(c2), -self.q2_max, self.q2_max))
            q1 = float(np.arctan2(y, x) - np.arctan2(self.l2 * np.sin(q2), self.l1 + self.l2 * np.cos(q2)))
            cost = abs(q2 - q[1]) + abs(_wrap(q1 - q[0]))
            if best is None or cost < best[0]:
                best = (cost, q1, q2)
        _, q1, q2 = best
        err = np.array([_wrap(q1 - q[0]), q2 - q[1]])
        return np.clip(self.kp * err - self.kd * qd, -1, 1).astype(np.float32)


def make_expert(env) -> Policy:
    family = env.task.split("-")[0]
    if env.task not in EXPERT_TASKS:
        raise ValueError(f"no scripted DMControl controller for {env.task!r}; those with one: {EXPERT_TASKS}")
    return {
        "cartpole": CartpoleExpert,
        "pendulum": PendulumExpert,
        "point_mass": PointMassExpert,
        "reacher": ReacherExpert,
    }[family](env)
