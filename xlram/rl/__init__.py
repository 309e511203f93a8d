"""xlram.rl: data for the Large Recurrent Action Model.

* `xlram.rl.conventions` — the shared observation/action/reward conventions (SPEC section 5): states
  padded to 204 with DMControl keys in fixed slots, 64×64 RGB frames, ≤ 8 continuous action dims in
  [-1, 1] or the 18-action discrete set, per-domain reward scales, returns-to-go, action bins.
* `xlram.rl.envs` — gymnasium environments per domain, named "domain/task": Meta-World (MT50, v3),
  DMControl, Atari (ale-py), Dark-Room 10×10, robosuite (Lift, Door).
* `xlram.rl.experts` — scripted experts per domain, and the noisy/random variants.
* `xlram.rl.generate` — mixed-quality datasets per task, resumable, in parallel (`xlram data generate`).
* `xlram.rl.datasets` — the Minari (HDF5) format: atomic writing, reading any Minari dataset directory.
* `xlram.rl.sampler` — training segments with returns-to-go and masks, one domain per micro-batch.

Simulators are optional (`pip install 'xlram[rl]'`) and imported only where used; the conventions and
the sampler need only NumPy (and torch for tensors).
"""
