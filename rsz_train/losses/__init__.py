"""Losses of the three models, each a small function tested on hand-checkable tensors."""
