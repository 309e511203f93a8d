"""The math of xLSTM, with no nn.Module: one folder per op, a plain reference beside each fast form."""
