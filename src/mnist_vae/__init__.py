"""mnist_vae: a reproducible convolutional VAE on MNIST (library behind the DVC stages)."""

__version__ = "0.1.0"
