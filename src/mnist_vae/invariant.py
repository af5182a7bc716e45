"""Training arithmetic whose bits do not depend on the thread count.

With the CPU kernels pinned (``environment``), four kinds of kernels still compute other bits
on another number of threads, because they split their work by thread:

- **Elementwise functions** (``exp``, ``sigmoid``, ``softplus``, ...). ATen cuts a tensor of
  more than ``GRAIN`` elements into one chunk per thread and runs each chunk in vectors of
  16 elements, the last ``length mod 16`` through the scalar ``std::`` function, which rounds
  otherwise than the vector one. Three threads cut a batch of 128 digits (100,352 pixels) at
  33,451: some pixels change path, so value.
- **Sums to one number** of more than ``GRAIN`` elements: one partial sum per thread, then
  the partial sums' sum.
- **Long matrix products** on an AMD EPYC: MKL's strict mode is thread-invariant on the
  Intel Xeon here, but on the AMD a weight gradient summed over a batch's 100,352 pixels
  came out other on 3 threads than on 2.
- **Convolutions** (oneDNN): oneDNN splits a sum between threads where its heuristics
  choose, from the thread count and, for some kernels, the CPU's cache sizes: the weight
  gradient's sum over the batch, and at some sizes a transposed convolution's forward sum.
  An AMD EPYC trained the lossy decoder to other bits on 1 thread than on 2; the Intel Xeon
  here does on 3, and CompressAI's synthesis transform (4 x 4 to 8 x 8) differs there too.

``ThreadInvariant``, a dispatch mode, gives those four what does not depend on the threads
and passes every other operation through untouched:

- an elementwise function runs in pieces that ATen splits on the 16-element grid (``k`` x
  ``GRAIN`` elements on ``k`` threads), and as it is where ATen's own split is on it
  already (a batch of 128 digits on 1, 2 and 4 threads);
- a sum adds fixed pieces of ``SUM_PIECE`` elements, each summed by one thread, then the
  pieces' sums;
- a convolution, forward and backward, always runs on ``FIXED_THREADS`` threads, so
  oneDNN splits it the same way whatever the process has (on a machine with more cores the
  convolutions do not use them; matrix products and everything else do), and so does a
  matrix product that sums over more than ``GRAIN`` terms.

What is computed is the same; only the order of some sums is fixed. Autograd sits above the
mode, so the backward formulas are PyTorch's own (their kernels pass through the mode too).
``python -m mnist_vae.reproducibility`` trains every part on 1 to 4 threads and compares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GRAIN = 32768
"""``at::internal::GRAIN_SIZE``: ATen splits work on more elements than this across threads"""
LANES = 64
"""a multiple of every vectorised loop's step (2 vectors of 8 floats under AVX2; of 16 under
AVX-512): chunks of a multiple of it run every element through the vector path"""
FIXED_THREADS = 2
"""the threads a convolution and a long matrix product always run on: oneDNN splits a
convolution's sums by them (the weight gradient's over the batch; a transposed
convolution's, at some sizes, over its windows), and MKL on an AMD a long product's"""
SUM_PIECE = GRAIN // 2  # summed by one thread (ATen keeps below GRAIN serial)

aten = torch.ops.aten

ELEMENTWISE = {
    aten.exp.default, aten.expm1.default, aten.log.default, aten.log1p.default,
    aten.log2.default, aten.sigmoid.default, aten.tanh.default, aten.softplus.default,
    aten.softplus_backward.default, aten.log_sigmoid_forward.default,
    aten.log_sigmoid_backward.default, aten.erf.default, aten.erfc.default,
    aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.logit.default, aten.silu.default,
    aten.gelu.default, aten.elu.default, aten.rsqrt.default, aten.reciprocal.default,
    aten.sqrt.default,
}  # fmt: skip
"""elementwise functions whose vector and scalar paths may round differently (some, like
``sqrt``, round alike today: listed so that a kernel change cannot break the claim)"""


def _aligned(numel: int, threads: int) -> bool:
    """Whether ATen's own split of ``numel`` elements on ``threads`` cuts on the grid."""
    chunks = min(threads, -(-numel // GRAIN))
    return chunks <= 1 or (-(-numel // chunks)) % LANES == 0


def _pieces(numel: int, threads: int) -> Iterator[slice]:
    """Slices of ``numel`` that ATen splits on the grid: ``threads`` x ``GRAIN`` elements, then
    a multiple of ``GRAIN``, then the rest (under ``GRAIN``: one thread)."""
    step = threads * GRAIN
    start = 0
    while numel - start >= step:
        yield slice(start, start + step)
        start += step
    whole = (numel - start) // GRAIN * GRAIN
    if whole:
        yield slice(start, start + whole)
        start += whole
    if start < numel:
        yield slice(start, numel)


def _elementwise(func, args, kwargs):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    numel = math.prod(shape)
    threads = torch.get_num_threads()
    if _aligned(numel, threads):
        return func(*args, **kwargs)
    flat = [a.expand(shape).reshape(-1) if isinstance(a, torch.Tensor) else a for a in args]
    results = [
        func(*(a[part] if isinstance(a, torch.Tensor) else a for a in flat), **kwargs)
        for part in _pieces(numel, threads)
    ]
    if isinstance(results[0], torch.Tensor):
        return torch.cat(results).view(shape)
    return tuple(torch.cat(outs).view(shape) for outs in zip(*results, strict=True))


def total(x: torch.Tensor) -> torch.Tensor:
    """The sum of all of ``x``'s elements, in an order fixed by its size alone: pieces of
    ``SUM_PIECE`` elements (each summed by one thread, the pieces shared between threads),
    then the pieces' sums. A 0-dim tensor of ``x``'s dtype."""
    flat = x.reshape(-1)
    if flat.numel() < GRAIN:
        return flat.sum()
    whole = flat.numel() // SUM_PIECE * SUM_PIECE
    sums = flat[:whole].view(-1, SUM_PIECE).sum(1)
    if whole < flat.numel():
        sums = torch.cat([sums, flat[whole:].sum().view(1)])
    return sums.sum()


def _reduces_all(x: torch.Tensor, dim) -> bool:
    dims = range(x.dim()) if dim is None or len(dim) == 0 else dim
    kept = [x.shape[d] for d in range(x.dim()) if d not in {d % max(x.dim(), 1) for d in dims}]
    return math.prod(kept) == 1 and x.numel() >= GRAIN


def _sum(func, args, kwargs):
    x, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim"))
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype = kwargs.get("dtype")
    if not x.is_floating_point() or not _reduces_all(x, dim):
        return func(*args, **kwargs)
    result = total(x if dtype is None else x.to(dtype))
    if func in (aten.mean.default, aten.mean.dim):
        result = result / x.numel()
    return _shaped(result, x, dim, keepdim)


def _shaped(result: torch.Tensor, x: torch.Tensor, dim, keepdim: bool) -> torch.Tensor:
    if keepdim:
        dims = range(x.dim()) if dim is None or len(dim) == 0 else dim
        shape = [1 if d in {d % x.dim() for d in dims} else n for d, n in enumerate(x.shape)]
        return result.view(shape)
    kept = [n for d, n in enumerate(x.shape) if dim is not None and len(dim) and d not in
            {d % x.dim() for d in dim}]  # fmt: skip
    return result.view(kept) if kept else result


def _mse_loss(func, args, kwargs):
    x, target = args[0], args[1]
    reduction = args[2] if len(args) > 2 else kwargs.get("reduction", 1)
    if reduction == 0 or x.numel() < GRAIN:  # 0: none, 1: mean, 2: sum
        return func(*args, **kwargs)
    result = total(aten.mse_loss.default(x, target, 0))
    return result / x.numel() if reduction == 1 else result


def _vector_norm(func, args, kwargs):
    x = args[0]
    order = args[1] if len(args) > 1 else kwargs.get("ord", 2)
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    if order != 2 or kwargs.get("dtype") is not None or not _reduces_all(x, dim):
        return func(*args, **kwargs)
    return _shaped(total(x * x).sqrt(), x, dim, keepdim)


def _foreach_norm(func, args, kwargs):
    tensors = args[0]
    order = args[1] if len(args) > 1 else kwargs.get("ord", 2)
    if order != 2 or kwargs.get("dtype") is not None:
        return func(*args, **kwargs)
    return [total(t * t).sqrt() if t.numel() >= GRAIN else t.norm() for t in tensors]


def _on_fixed_threads(func, args, kwargs):
    """An operation (a oneDNN convolution, forward or backward; a long product) on
    ``FIXED_THREADS`` threads, whatever the process has: its kernel splits its sums by them."""
    threads = torch.get_num_threads()
    if threads == FIXED_THREADS:
        return func(*args, **kwargs)
    torch.set_num_threads(FIXED_THREADS)
    try:
        return func(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _long_product(func, args, kwargs):
    """A matrix product that sums over more than ``GRAIN`` terms (a linear layer's weight
    gradient, over every pixel of the batch) on ``FIXED_THREADS`` threads: MKL's strict
    mode keeps it the same on any thread count on the Intel Xeon, but not on an AMD EPYC,
    where 3 threads gave other bits than 1 and 2. Shorter sums pass through."""
    a = args[0] if func is aten.mm.default else args[1]
    if a.shape[-1] <= GRAIN:
        return func(*args, **kwargs)
    return _on_fixed_threads(func, args, kwargs)


HANDLERS: dict[object, Callable] = {
    **dict.fromkeys(ELEMENTWISE, _elementwise),
    **dict.fromkeys(
        (aten.sum.default, aten.sum.dim_IntList, aten.mean.default, aten.mean.dim), _sum
    ),
    aten.mse_loss.default: _mse_loss,
    aten.linalg_vector_norm.default: _vector_norm,
    aten._foreach_norm.Scalar: _foreach_norm,
    aten.convolution.default: _on_fixed_threads,
    aten.convolution_backward.default: _on_fixed_threads,
    aten.mm.default: _long_product,
    aten.addmm.default: _long_product,
}


class ThreadInvariant(TorchDispatchMode):
    """Within it, the CPU operations above compute the same bits on any number of threads;
    every other operation runs as it would without it. For CPU tensors only (a GPU's
    kernels have their own orders: see docs/reproducibility.md)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = HANDLERS.get(func)
        if handler is None or not _on_cpu(args):
            return func(*args, **kwargs)
        return handler(func, args, kwargs)


def _on_cpu(args) -> bool:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu"
        if isinstance(a, list | tuple) and a and isinstance(a[0], torch.Tensor):
            return a[0].device.type == "cpu"
    return False


def thread_invariant(enabled: bool = True):
    """``ThreadInvariant()`` where ``enabled`` (the kernels are pinned), else a no-op."""
    return ThreadInvariant() if enabled else nullcontext()


@contextmanager
def pinned_arithmetic() -> Iterator[None]:
    """The thread-invariant arithmetic wherever the package pinned the CPU kernels (the
    default on x86-64 with AVX2); nothing with native kernels, where the bits are the
    machine's own anyway (``MNIST_VAE_NATIVE_CPU=1``)."""
    from . import CPU_KERNELS
    from .environment import PINNED

    with thread_invariant(CPU_KERNELS == PINNED):
        yield
