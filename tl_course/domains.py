"""Digit domains for domain adaptation (notebook 04): MNIST-M, UCI digits, USPS, SVHN."""
