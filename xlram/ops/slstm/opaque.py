"""The sLSTM loop over time as a function torch.compile does not trace (imported only while compiling)."""

import torch

from .recurrent import _run_sequence

run_sequence_opaque = torch.compiler.disable(_run_sequence)
