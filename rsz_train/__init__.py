"""rsz_train: procedural data, class semantics and the DSVA, MCFA and MSA models in PyTorch."""
