"""Sequence layers with one state convention: ``forward(x (B, S, D), state=None) -> (y, state)`` and
``step(x_t (B, D), state) -> (y_t, state)``; ``init_state(batch_size)`` gives the zero state."""

from .mlstm import MLSTMLayer, MLSTMLayerState
from .mlstm_large import MLSTMLargeLayer
from .slstm import SLSTMLayer, SLSTMLayerState

__all__ = ["MLSTMLargeLayer", "MLSTMLayer", "MLSTMLayerState", "SLSTMLayer", "SLSTMLayerState"]
