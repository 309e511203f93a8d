"""Atari: scripted policies that read the game state from the console's RAM.

* Pong: the paddle follows the point where the ball will cross the paddle's column (the ball's
  course extrapolated from its last two positions, with bounces off the top and bottom walls),
  aiming slightly off-centre so that returns come back at an angle the opponent misses.
* Breakout: FIRE to serve, then the paddle follows the ball's extrapolated landing column.
* Freeway: walk up, waiting (or stepping back) when a short look-ahead in a copy of the emulator
  state shows that a car would knock the chicken back.

RAM addresses were found by watching the bytes change while playing (see tests/rl/test_experts.py for
what is checked).
"""

from __future__ import annotations

import numpy as np

from xlram.rl.experts import Policy

EXPERT_TASKS = ("pong", "breakout", "freeway")

# Full action set indices
NOOP, FIRE, UP, RIGHT, LEFT, DOWN = 0, 1, 2, 3, 4, 5


def _reflect(y: float, lo: float, hi: float) -> float:
    """Fold a straight-line coordinate back into [lo, hi] (elastic bounces off both walls)."""
    span = hi - lo
    z = (y - lo) % (2 * span)
    return lo + (z if z <= span else 2 * span - z)


class _RamPolicy(Policy):
    def __init__(self, env):
        self.env = env
        self.prev: np.ndarray | None = None

    def reset(self) -> None:
        self.prev = None


class PongExpert(_RamPolicy):
    """RAM: 49 ball x, 54 ball y, 51 own paddle y (top edge); actions RIGHT = up, LEFT = down.

    The paddle moves up to ~25 units per agent step and keeps moving, so steering towards the target
    with a narrow dead zone makes it oscillate round the ball: a 10-unit dead zone and a look-ahead of
    half the paddle's velocity won 16 points and lost 1 over 7,500 steps (3 seeds), against 13:18 for a
    3-unit dead zone."""

    PADDLE_X = 188  # ball x at which it meets our paddle
    Y_LO, Y_HI = 38, 203  # ball y range between the walls

    def __init__(self, env, offset: float = 8.0, aim: float = 4.0, dead: float = 10.0, damp: float = 0.5):
        super().__init__(env)
        self.offset, self.aim, self.dead, self.damp = offset, aim, dead, damp
        self.prev_py: float | None = None

    def reset(self) -> None:
        super().reset()
        self.prev_py = None

    def act(self, obs):
        ram = self.env.ram()
        bx, by, py = float(ram[49]), float(ram[54]), float(ram[51])
        prev, self.prev = self.prev, np.array([bx, by])
        target = by
        if prev is not None and by > 0 and bx > 0:
            vx, vy = bx - prev[0], by - prev[1]
            if vx > 0 and abs(vx) < 40 and abs(vy) < 40:
                t = (self.PADDLE_X - bx) / vx
                target = _reflect(by + vy * t, self.Y_LO, self.Y_HI)
                # hit with the paddle's edge, on the side the ball comes from, to return it steeply
                target += self.aim * np.sign(vy)
            elif vx <= 0:
                target = 0.5 * (self.Y_LO + self.Y_HI)  # ball going away: wait in the middle
        if by == 0:
            target = 0.5 * (self.Y_LO + self.Y_HI)
        # the paddle has momentum: steer by where it is heading, not where it is
        pv = 0.0 if self.prev_py is None else py - self.prev_py
        self.prev_py = py
        centre = py + self.offset + self.damp * pv
        if centre < target - self.dead:
            return LEFT
        if centre > target + self.dead:
            return RIGHT
        return NOOP


class BreakoutExpert(_RamPolicy):
    """RAM: 72 paddle x (left edge), 99 ball x, 101 ball y; FIRE serves. Same momentum-aware steering
    as Pong, towards the column where the falling ball will reach the paddle's row. The paddle moves up
    to ~20 units per agent step, so a wide dead zone (8) keeps it from oscillating round the target."""

    PADDLE_Y = 177  # ball y when it meets the paddle
    X_LO, X_HI = 55, 207  # ball x between the side walls

    def __init__(self, env, offset: float = 7.0, dead: float = 8.0, damp: float = 0.5):
        super().__init__(env)
        self.offset, self.dead, self.damp = offset, dead, damp
        self.prev_px: float | None = None

    def reset(self) -> None:
        super().reset()
        self.prev_px = None

    def act(self, obs):
        ram = self.env.ram()
        px, bx, by = float(ram[72]), float(ram[99]), float(ram[101])
        prev, self.prev = self.prev, np.array([bx, by])
        pv = 0.0 if self.prev_px is None else px - self.prev_px
        self.prev_px = px
        if by == 0 or bx == 0:
            return FIRE
        target = bx
        if prev is not None and prev[1] > 0:
            vx, vy = bx - prev[0], by - prev[1]
            if vy > 0 and abs(vx) < 30 and by < self.PADDLE_Y:
                t = (self.PADDLE_Y - by) / vy
                target = _reflect(bx + vx * t, self.X_LO, self.X_HI)
        centre = px + self.offset + self.damp * pv
        if centre < target - self.dead:
            return RIGHT
        if centre > target + self.dead:
            return LEFT
        return NOOP


class FreewayExpert(_RamPolicy):
    """RAM 14: the chicken's height (grows going up). Walking straight up scores ~21 with sticky
    actions, because cars knock the chicken back. This policy looks ahead in a copy of the emulator
    state: it tries each of UP, NOOP and DOWN followed by UPs for a short horizon and takes the one
    that leaves the chicken highest (ties go to UP), so it waits for a car to pass instead of being hit.
    """

    HORIZON = 6

    def _height_after(self, first: int) -> float:
        ale = self.env.ale
        acts = self.env._actions
        state = ale.cloneState(include_rng=True)
        score = 0.0
        for k in range(self.HORIZON):
            score += ale.act(acts[first if k == 0 else UP])
        y = float(ale.getRAM()[14])
        ale.restoreState(state)
        return y + 1000.0 * score  # a crossing resets the height: count it as far above

    def act(self, obs):
        best, best_y = UP, self._height_after(UP)
        if best_y - float(self.env.ram()[14]) >= self.HORIZON:
            return UP  # clear progress: nothing in the way, no need to try the others
        for a in (NOOP, DOWN):
            y = self._height_after(a)
            if y > best_y:
                best, best_y = a, y
        return best


def make_expert(env) -> Policy:
    if env.task not in EXPERT_TASKS:
        raise ValueError(f"no scripted Atari policy for {env.task!r}; those with one: {EXPERT_TASKS}")
    return {"pong": PongExpert, "breakout": BreakoutExpert, "freeway": FreewayExpert}[env.task](env)
