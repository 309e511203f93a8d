"""Atari 2600 games (`ale-py`, which ships the ROMs) as 64×64 RGB image envs.

The conventions of the reference's Atari data: full 18-action set, frame-skip 4, up to 30 no-op
actions at reset, sticky actions with probability 0.25 (ALE v5), one 64×64 RGB frame per step with no
frame stacking, and clipped rewards. The reward returned is the clipped one (its sign);
``info["raw_reward"]`` carries the game score so that returns can be reported in game points.
Frames are taken from ALE directly (210×160) and resized with an area filter.
"""

from __future__ import annotations

import numpy as np

from xlram.rl.conventions import IMAGE_SHAPE, NUM_DISCRETE_ACTIONS
from xlram.rl.envs.base import TaskEnv, require

DOMAIN = "atari"
NOOP_MAX = 30
FRAME_SKIP = 4
STICKY = 0.25
# Episodes are cut at 27,000 agent steps (108,000 frames), the usual cap.
MAX_EPISODE_STEPS = 27_000

# Lower-case game names; ALE ids are "ALE/<CamelCase>-v5".
_ALE_NAMES: dict[str, str] = {
    "alien": "Alien",
    "amidar": "Amidar",
    "assault": "Assault",
    "asterix": "Asterix",
    "asteroids": "Asteroids",
    "atlantis": "Atlantis",
    "bank_heist": "BankHeist",
    "battle_zone": "BattleZone",
    "beam_rider": "BeamRider",
    "boxing": "Boxing",
    "breakout": "Breakout",
    "carnival": "Carnival",
    "centipede": "Centipede",
    "chopper_command": "ChopperCommand",
    "crazy_climber": "CrazyClimber",
    "demon_attack": "DemonAttack",
    "double_dunk": "DoubleDunk",
    "enduro": "Enduro",
    "fishing_derby": "FishingDerby",
    "freeway": "Freeway",
    "frostbite": "Frostbite",
    "gopher": "Gopher",
    "gravitar": "Gravitar",
    "hero": "Hero",
    "ice_hockey": "IceHockey",
    "jamesbond": "Jamesbond",
    "kangaroo": "Kangaroo",
    "krull": "Krull",
    "kung_fu_master": "KungFuMaster",
    "ms_pacman": "MsPacman",
    "name_this_game": "NameThisGame",
    "phoenix": "Phoenix",
    "pong": "Pong",
    "qbert": "Qbert",
    "riverraid": "Riverraid",
    "road_runner": "RoadRunner",
    "robotank": "Robotank",
    "seaquest": "Seaquest",
    "space_invaders": "SpaceInvaders",
    "star_gunner": "StarGunner",
    "time_pilot": "TimePilot",
    "tutankham": "Tutankham",
    "up_n_down": "UpNDown",
    "video_pinball": "VideoPinball",
    "wizard_of_wor": "WizardOfWor",
    "yars_revenge": "YarsRevenge",
    "zaxxon": "Zaxxon",
}
TASKS: tuple[str, ...] = tuple(_ALE_NAMES)
# The reference's held-out five.
HELD_OUT: tuple[str, ...] = ("alien", "pong", "ms_pacman", "space_invaders", "star_gunner")

# Human and random scores (game points) for human-normalised scores, from the DQN literature.
HUMAN_RANDOM: dict[str, tuple[float, float]] = {
    "pong": (14.6, -20.7),
    "breakout": (30.5, 1.7),
    "freeway": (29.6, 0.0),
}


def resize_frame(frame: np.ndarray, size: int = IMAGE_SHAPE[0]) -> np.ndarray:
    """(210, 160, 3) uint8 -> (size, size, 3) uint8 with Pillow's area (box) filter."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX), np.uint8)


class AtariEnv(TaskEnv):
    """One Atari game. obs (64, 64, 3) uint8, Discrete(18), clipped rewards, game score in info."""

    def __init__(
        self,
        task: str,
        sticky: float = STICKY,
        noop_max: int = NOOP_MAX,
        max_episode_steps: int = MAX_EPISODE_STEPS,
    ):
        super().__init__(DOMAIN, task, TASKS)
        gym = require("gymnasium")
        ale_py = require("ale_py")
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # before construction: no banner
        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", 0)
        self.ale.setInt("frame_skip", FRAME_SKIP)
        self.ale.setFloat("repeat_action_probability", float(sticky))
        self.ale.setInt("max_num_frames_per_episode", max_episode_steps * FRAME_SKIP)
        self._rom = ale_py.roms.get_rom_path(_rom_name(task))
        self.ale.loadROM(self._rom)
        self._actions = self.ale.getLegalActionSet()
        if len(self._actions) != NUM_DISCRETE_ACTIONS:  # pragma: no cover - ALE always gives 18
            raise RuntimeError(
                f"ALE gave {len(self._actions)} legal actions, expected {NUM_DISCRETE_ACTIONS}"
            )
        self.observation_space = gym.spaces.Box(0, 255, IMAGE_SHAPE, np.uint8)
        self.action_space = gym.spaces.Discrete(NUM_DISCRETE_ACTIONS)
        self.noop_max = noop_max
        self.max_episode_steps = max_episode_steps

    def ram(self) -> np.ndarray:
        """The console's 128 bytes of RAM (the scripted policies read the game state from it)."""
        return self.ale.getRAM()

    def lives(self) -> int:
        return int(self.ale.lives())

    def _frame(self) -> np.ndarray:
        return resize_frame(self.ale.getScreenRGB())

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None or not hasattr(self, "_reseeded"):
            s = int(seed) if seed is not None else int(self.np_random.integers(2**31))
            self.ale.setInt("random_seed", s % (2**31))
            self.ale.loadROM(self._rom)  # the new seed takes effect on load
            self._reseeded = True
        self.ale.reset_game()
        for _ in range(int(self.np_random.integers(self.noop_max + 1))):
            self.ale.act(self._actions[0])
            if self.ale.game_over():
                self.ale.reset_game()
        return self._frame(), {"raw_reward": 0.0, "lives": self.lives()}

    def step(self, action):
        a = int(action)
        if not 0 <= a < NUM_DISCRETE_ACTIONS:
            raise ValueError(f"{self.task_id}: action must be in [0, {NUM_DISCRETE_ACTIONS}), got {action!r}")
        raw = float(self.ale.act(self._actions[a]))
        terminated = bool(self.ale.game_over(with_truncation=False))
        truncated = bool(not terminated and self.ale.game_truncated())
        return (
            self._frame(),
            float(np.sign(raw)),
            terminated,
            truncated,
            {"raw_reward": raw, "lives": self.lives()},
        )

    def close(self):
        pass


def _rom_name(task: str) -> str:
    return task  # ale-py's ROM ids are the snake_case game names used here
