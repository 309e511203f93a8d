"""xlram: xLSTM building blocks, language models, Vision-LSTM and the Large Recurrent Action Model."""

__version__ = "0.1.0"
