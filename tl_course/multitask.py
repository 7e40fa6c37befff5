"""Multi-task learning (notebook 05): shared trunk, named heads, loss weighting."""
