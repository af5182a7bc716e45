"""mnist_vae: a reproducible convolutional VAE on MNIST (library behind the DVC stages)."""

from .environment import keep_arrays_off_huge_pages, pin_cpu_kernels

__version__ = "0.1.0"

# Before any module of the package imports torch: CPU kernels capped at AVX2, so training is
# bit-identical across x86-64 CPUs and thread counts (README: Reproducibility).
CPU_KERNELS = pin_cpu_kernels()
keep_arrays_off_huge_pages()  # a speed setting: see environment
