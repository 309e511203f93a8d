"""Baselines sized to a parameter budget, for comparisons at matched parameter counts.

    target = create_model("lm-xlstm[7:1]-demo").num_params()
    config = matched_config(target, "transformer", vocab_size=256, tie_weights=True)
    model = TransformerLM(config)   # model.num_params() within 5% of target

:func:`count_params` gives a config's parameter count without building the model (the formulas are
checked against real models in the tests), so the search below is cheap even for billion-parameter
targets.
"""

from __future__ import annotations

import math

from xlram.baselines.lstm import LSTMLMConfig
from xlram.baselines.transformer import TransformerConfig, TransformerLMConfig
from xlram.nn import round_up

__all__ = ["count_params", "matched_config"]

KINDS = ("transformer", "lstm")


def count_params(config: TransformerLMConfig | LSTMLMConfig) -> int:
    """Number of parameters of the model ``config`` builds (tied weights counted once)."""
    if isinstance(config, TransformerLMConfig):
        base, per_layer = _transformer_terms(config.vocab_size, config.tie_weights, config.transformer)
        return base + config.transformer.num_layers * per_layer
    if isinstance(config, LSTMLMConfig):
        V, D, Hd, L = config.vocab_size, config.dim, config.hidden_dim, config.num_layers
        head = 0 if config.tie_weights else Hd * V
        # Each layer: input and recurrent weights for 4 gates, and two bias vectors (b_ih, b_hh).
        layers = 4 * Hd * (D + Hd + 2) + (L - 1) * 4 * Hd * (Hd + Hd + 2)
        return V * D + layers + head
    raise TypeError(f"count_params expects a TransformerLMConfig or an LSTMLMConfig, "
                    f"got {type(config).__name__}")


def _transformer_terms(vocab_size: int, tie_weights: bool, t: TransformerConfig) -> tuple[int, int]:
    """(parameters outside the blocks, parameters per block)."""
    D, H, Hkv, hd = t.dim, t.num_heads, t.kv_heads, t.head_dim
    F = round_up(t.ffn_proj_factor * D, t.ffn_round_to)
    per_layer = 2 * D + D * (H + 2 * Hkv) * hd + H * hd * D + 3 * D * F  # norms, qkv, out, SwiGLU
    base = vocab_size * D + D  # embedding, final norm
    if not tie_weights:
        base += vocab_size * D
    if t.positions == "learned":
        base += t.max_len * D
    return base, per_layer


def matched_config(target_params: int, kind: str, vocab_size: int, *, dim: int | None = None,
                   num_layers: int | None = None, tolerance: float = 0.05, head_dim: int = 64,
                   aspect: float = 64.0, width_multiple: int = 8, max_layers: int = 128,
                   **config_kwargs) -> TransformerLMConfig | LSTMLMConfig:
    """A baseline config whose parameter count is within ``tolerance`` of ``target_params``.

    Args:
        target_params: the parameter count to match (e.g. an xLSTM's ``num_params()``).
        kind: ``"transformer"`` (:class:`TransformerLMConfig`) or ``"lstm"`` (:class:`LSTMLMConfig`).
        vocab_size: the vocabulary, as in the model being matched (the embedding counts).
        dim: fix the width instead of searching it.
        num_layers: fix the depth instead of searching it (an LSTM has 2 layers unless ``dim`` is fixed).
        tolerance: the largest accepted relative difference, ``|params - target| / target``.
        head_dim: preferred Transformer head size; widths are multiples of it (``num_heads = dim //
            head_dim``) and, unless ``ffn_round_to`` is given, the SwiGLU size is rounded to
            ``min(64, head_dim)``.
        aspect: when both width and depth are free (Transformer), the preferred ``dim / num_layers``
            among the sizes that match (64: GPT-2 small and Llama-125M have 768 / 12).
        width_multiple: LSTM widths are multiples of this.
        max_layers: the deepest model considered.
        config_kwargs: other fields of the config (``tie_weights``, ``positions``, ``max_len``,
            ``num_kv_heads``, ``ffn_proj_factor``, ``dropout``...); they enter the count.

    Returns:
        The config that matches with the preferred shape (Transformer) or the smallest error.

    Small models have coarse size steps (one more layer or head can add half the parameters). When no
    size on the grid matches, the grid is refined by halving ``head_dim`` (down to 8) or
    ``width_multiple`` (down to 1) before giving up with a ``ValueError`` that names the closest size.
    """
    if isinstance(target_params, bool) or not isinstance(target_params, int) or target_params < 1:
        raise ValueError(f"target_params must be a positive int, got {target_params!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(tolerance, int | float) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    for name, value in (("dim", dim), ("num_layers", num_layers), ("head_dim", head_dim),
                        ("width_multiple", width_multiple), ("max_layers", max_layers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kind == "transformer" and "num_heads" in config_kwargs:
        raise ValueError("matched_config: give head_dim, not num_heads (num_heads = dim // head_dim)")
    if kind == "lstm" and dim is None and num_layers is None:
        num_layers = 2
    error = lambda p: abs(p - target_params) / target_params
    tried = []  # (config, params) of every size considered
    grid = _halvings(head_dim, 8) if kind == "transformer" else _halvings(width_multiple, 1)
    for step in grid:
        if kind == "transformer":
            if dim is not None and dim % step:
                continue
            build = lambda d, n, hd=step: _transformer_config(vocab_size, d, n, hd, config_kwargs)
            # With grouped-query attention the number of heads must stay a multiple of the kv heads.
            multiple = step * (config_kwargs.get("num_kv_heads") or 1)
        else:
            build = lambda d, n: LSTMLMConfig(vocab_size=vocab_size, dim=d, num_layers=n, **config_kwargs)
            multiple = step
        candidates = _candidates(build, target_params, tolerance, dim, num_layers, multiple, max_layers)
        tried += candidates
        inside = [(c, p) for c, p in candidates if error(p) <= tolerance]
        if inside and kind == "transformer" and dim is None and num_layers is None:
            shape_of = lambda c: c.transformer.dim / c.transformer.num_layers
            return min(inside, key=lambda cp: (abs(math.log(shape_of(cp[0]) / aspect)), error(cp[1])))[0]
        if inside:
            return min(inside, key=lambda cp: error(cp[1]))[0]
    if not tried:
        raise ValueError(f"matched_config: dim={dim} is not a multiple of head_dim={head_dim} "
                         f"(or of any head size down to 8)")
    closest, p = min(tried, key=lambda cp: error(cp[1]))
    raise ValueError(
        f"matched_config: no {kind} within {tolerance:.0%} of {target_params} parameters; the closest is "
        f"{_shape(closest)} with {p} ({(p - target_params) / target_params:+.1%}). Free the width or "
        f"the depth, or raise the tolerance."
    )


def _halvings(start: int, floor: int) -> list[int]:
    """``start, start // 2, ...`` down to ``floor`` (or just ``start`` if it is below the floor)."""
    steps = [start]
    while steps[-1] // 2 >= floor and steps[-1] % 2 == 0:
        steps.append(steps[-1] // 2)
    return steps


def _candidates(build, target: int, tolerance: float, dim: int | None, num_layers: int | None,
                multiple: int, max_layers: int) -> list[tuple]:
    """(config, params) for every width on the grid, each at the depths around the target."""
    if dim is not None:
        widths = [dim]
    else:
        widths, d = [], multiple
        while True:  # up to the first width whose one-layer model is already too large
            widths.append(d)
            if count_params(build(d, 1)) > target * (1 + tolerance):
                break
            d += multiple
    out = []
    for d in widths:
        if num_layers is not None:
            depths = [num_layers]
        else:
            # The count is linear in depth: solve for it, then try the depths around the solution.
            one, two = count_params(build(d, 1)), count_params(build(d, 2))
            exact = 1 + (target - one) / (two - one)
            depths = sorted({min(max(n, 1), max_layers) for n in (math.floor(exact), math.ceil(exact))})
        for n in depths:
            config = build(d, n)
            out.append((config, count_params(config)))
    return out


def _transformer_config(vocab_size: int, dim: int, num_layers: int, head_dim: int, kwargs: dict):
    kwargs = dict(kwargs)
    tie = kwargs.pop("tie_weights", False)
    kwargs.setdefault("ffn_round_to", min(64, head_dim))
    stack = TransformerConfig(dim=dim, num_layers=num_layers, num_heads=dim // head_dim, **kwargs)
    return TransformerLMConfig(vocab_size=vocab_size, transformer=stack, tie_weights=tie)


def _shape(config) -> str:
    if isinstance(config, TransformerLMConfig):
        return f"dim={config.transformer.dim}, num_layers={config.transformer.num_layers}"
    return f"dim={config.dim}, num_layers={config.num_layers}"
