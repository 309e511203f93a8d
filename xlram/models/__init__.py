"""Models built on the xLSTM blocks, and a registry of named variants (``create_model``)."""

import xlram.baselines  # noqa: F401  (registers the baselines: lm-transformer-*, lm-lstm-*)
from xlram.models.lm import XLSTMLM, XLSTMLMConfig
from xlram.models.registry import create_model, get_model_entry, list_models, register_model

__all__ = ["XLSTMLM", "XLSTMLMConfig", "create_model", "get_model_entry", "list_models", "register_model"]
