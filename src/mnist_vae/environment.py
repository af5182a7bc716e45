"""What decides the last bits of a CPU run, and the record of it.

PyTorch's CPU kernels pick their instruction set at run time: ATen's vectorised kernels
(``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``DNNL_MAX_CPU_ISA``) and MKL's matrix
products (``MKL_CBWR``) each take the widest the CPU has, and AVX-512 kernels sum in another
order than AVX2 ones, so the same seed gives other weights on another CPU. Measured here
(``bench/reproducibility.py``, docs/reproducibility.md): capping all three at AVX2 makes
training bit-identical whatever the instruction set above AVX2, for about 11% more training
time. MKL's matrix products must also be in its strict mode (``MKL_CBWR=AVX2,STRICT``) for
the thread count not to matter: on an Intel Xeon, ``AVX2`` alone gave other weights on one
thread than on two (on an AMD EPYC it did not). So the package caps them when it is
imported, before torch computes anything, unless ``MNIST_VAE_NATIVE_CPU=1``.

Torch-free at import: ``mnist_vae/__init__.py`` runs ``pin_cpu_kernels`` before any
module imports torch, and ``python -m mnist_vae.params`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

NATIVE_SWITCH = "MNIST_VAE_NATIVE_CPU"
PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",  # STRICT: the same bits for any number of threads
}
PINNED = "avx2"  # what ``cpu_kernels`` reads when the pin is in force
# Names of the variables the pin set (not the user): child processes inherit the pin, and one
# started with the native switch must be able to take it back.
SET_BY_PIN = "MNIST_VAE_PINNED_BY_PACKAGE"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def pin_cpu_kernels(
    environ: MutableMapping[str, str] | None = None, flags: set[str] | None = None
) -> str:
    """Cap the CPU kernels at AVX2 in ``environ`` (the process's environment by default) and
    say what was decided: ``"avx2"``, or ``"native (...)"`` with the reason.

    Settings the user made themselves win over the pin. Only x86-64 CPUs with AVX2 are
    pinned: torch trusts ``ATEN_CPU_CAPABILITY`` blindly, so on a CPU without AVX2 it would
    crash, and other architectures have their own kernels anyway."""
    environ = os.environ if environ is None else environ
    if environ.get(NATIVE_SWITCH, "") not in ("", "0"):
        for name in filter(None, environ.pop(SET_BY_PIN, "").split(",")):
            environ.pop(name, None)
        return f"native ({NATIVE_SWITCH}={environ[NATIVE_SWITCH]})"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"native ({platform.machine()}: no AVX2 kernels to pin)"
    flags = cpu_flags() if flags is None else flags
    if flags is None or "avx2" not in flags:
        return "native (the CPU does not report AVX2)"
    set_now = [name for name in PINNED_KERNELS if name not in environ]
    for name in set_now:
        environ[name] = PINNED_KERNELS[name]
    if set_now:
        environ[SET_BY_PIN] = ",".join(set_now)
    return PINNED


HUGEPAGE_SWITCH = "NUMPY_MADVISE_HUGEPAGE"


def keep_arrays_off_huge_pages(environ: MutableMapping[str, str] | None = None) -> bool:
    """Stop NumPy asking for transparent huge pages, unless ``NUMPY_MADVISE_HUGEPAGE`` is set;
    returns whether they are off.

    A speed setting, not a bits one. NumPy marks every array of 4 MiB or more
    ``madvise(MADV_HUGEPAGE)``. Where the kernel compacts memory for such pages on demand
    (``/sys/kernel/mm/transparent_hugepage/defrag``: ``madvise``, a common default), an
    allocation made after PyTorch has churned memory can stall for compaction: PCA's
    round trips in the rate_distortion stage took 2 to 3 s each after an SSIM instead of
    0.13 s, the whole PCA sweep 101 s instead of 58 s (2-core Xeon). NumPy reads the
    variable when it is imported, and a stage imports pandas or MLflow (so NumPy) before
    this package: then the switch is also turned at run time."""
    environ = os.environ if environ is None else environ
    if environ.setdefault(HUGEPAGE_SWITCH, "0") != "0":
        return False
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # imported before us: it has read the variable already
        core = "numpy._core" if int(numpy.__version__.split(".")[0]) >= 2 else "numpy.core"
        importlib.import_module(f"{core}.multiarray")._set_madvise_hugepage(False)
    return True


def record(device: str, cpu_kernels: str) -> dict[str, Any]:
    """What determines a run's bits, for the metrics file and the MLflow run: enough to
    explain from the records alone why a rerun elsewhere differs. ``cpu_kernels`` is what
    ``pin_cpu_kernels`` said."""
    import torch  # here, not at import: see the module docstring

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": device if gpu is None else f"{device} ({gpu}, CUDA {torch.version.cuda})",
        "cpu_kernels": cpu_kernels,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "auto"),
        "dnnl_max_cpu_isa": os.environ.get("DNNL_MAX_CPU_ISA", "all"),
        "threads": torch.get_num_threads(),
    }
