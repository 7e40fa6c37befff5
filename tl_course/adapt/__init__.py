"""Domain adaptation (notebook 04): gradient reversal, DANN, Deep CORAL, AdaBN, baselines."""
