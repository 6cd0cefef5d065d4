"""rsz_infer: zero-shot labeling and text retrieval of remote-sensing tiles, without PyTorch."""

__version__ = "0.1.0"
