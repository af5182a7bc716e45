"""mnist_vae: a reproducible convolutional VAE on MNIST (library behind the DVC stages)."""

from importlib.metadata import PackageNotFoundError, version

from .environment import keep_arrays_off_huge_pages, pin_cpu_kernels

try:
    __version__ = version("mnist-vae")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

# Before any module of the package imports torch: CPU kernels capped at AVX2, so training is
# bit-identical across x86-64 CPUs and thread counts (README: Reproducibility).
CPU_KERNELS = pin_cpu_kernels()
keep_arrays_off_huge_pages()  # a speed setting: see environment
