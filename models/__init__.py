"""Model architectures built from revnet layers (MNIST first; CIFAR-10 and ImageNet later)."""
