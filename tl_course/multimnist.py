"""MultiMNIST (notebook 05): two overlapping digits per image, built from MNIST."""
