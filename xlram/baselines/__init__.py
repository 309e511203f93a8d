"""What a user would pick instead of an xLSTM, built to the same interface as ``XLSTMLM``.

- :class:`TransformerLM`: Llama-style decoder (RMSNorm, RoPE or learned positions, SwiGLU) whose state
  is a :class:`KVCache`;
- :class:`LSTMLM`: a classic multi-layer LSTM whose state is ``(h, c)``;
- :func:`matched_config`: either one sized to a parameter budget, for matched comparisons.

Importing this package registers ``lm-transformer-*`` and ``lm-lstm-*`` in the model registry.
"""

from xlram.baselines.lstm import LSTMLM, LSTMLMConfig
from xlram.baselines.matching import count_params, matched_config
from xlram.baselines.transformer import (
    KVCache,
    TransformerConfig,
    TransformerLM,
    TransformerLMConfig,
    TransformerStack,
)

__all__ = ["KVCache", "LSTMLM", "LSTMLMConfig", "TransformerConfig", "TransformerLM", "TransformerLMConfig",
           "TransformerStack", "count_params", "matched_config"]
