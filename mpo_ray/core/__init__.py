"""The mathematical core: solver, estimators, gate and statistics on numpy arrays (no torch, no Ray)."""
