"""The thread-invariant training arithmetic: the same bits on 1 to 4 threads, the same math."""

from __future__ import annotations

from contextlib import contextmanager
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mnist_vae import CPU_KERNELS
from mnist_vae.environment import PINNED
from mnist_vae.invariant import GRAIN, LANES, ThreadInvariant, _aligned, _pieces, total

THREADS = (1, 2, 3, 4)
BATCH = (128, 1, 28, 28)  # a batch of digits: 100,352 pixels, cut at 33,451 by 3 threads


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_each_thread_count(compute) -> list[torch.Tensor]:
    results = []
    for n in THREADS:
        with threads(n), ThreadInvariant():
            results.append(compute())
    return results


def assert_all_equal(results: list[torch.Tensor]) -> None:
    for i, result in enumerate(results):
        assert torch.equal(result, results[0]), f"result {i} differs from the first"


@given(st.integers(1, 20 * GRAIN), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_the_pieces_cover_the_tensor_and_ATen_splits_each_on_the_grid(numel, n):
    pieces = list(_pieces(numel, n))
    assert pieces[0].start == 0 and pieces[-1].stop == numel
    assert all(a.stop == b.start for a, b in pairwise(pieces))
    for piece in pieces[:-1]:
        assert _aligned(piece.stop - piece.start, n)
    assert _aligned(pieces[-1].stop - pieces[-1].start, n)


def test_a_split_off_the_grid_is_recognised():
    assert _aligned(128 * 784, 2) and _aligned(128 * 784, 4) and _aligned(GRAIN, 7)
    assert not _aligned(128 * 784, 3)
    assert LANES % 16 == 0


@pytest.mark.skipif(CPU_KERNELS != PINNED, reason="the claim is the pinned kernels'")
def test_without_the_mode_three_threads_change_a_sigmoid():
    """The hazard the mode exists for, as it is on this CPU (vectorised kernels at AVX2)."""
    x = torch.randn(BATCH, generator=torch.Generator().manual_seed(0)) * 4
    with threads(1):
        one = torch.sigmoid(x)
    with threads(3):
        three = torch.sigmoid(x)
    assert not torch.equal(one, three)


@pytest.mark.parametrize(
    "function",
    [torch.sigmoid, torch.exp, torch.log1p, nn.functional.softplus, nn.functional.logsigmoid],
    ids=["sigmoid", "exp", "log1p", "softplus", "logsigmoid"],
)
@pytest.mark.parametrize("shape", [BATCH, (128, 4, 28, 28), (3, 33333)], ids=str)
def test_elementwise_functions_give_one_thread_s_bits_on_any_count(function, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).abs() * 3
    with threads(1):
        expected = function(x)
    results = on_each_thread_count(lambda: function(x))
    assert_all_equal([expected, *results])


@given(st.integers(1, 6 * GRAIN))
@settings(max_examples=25, deadline=None)
def test_a_total_is_the_same_on_any_thread_count_and_is_the_sum(numel):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    results = []
    for n in THREADS:
        with threads(n):
            results.append(total(x))
    assert_all_equal(results)
    assert torch.allclose(results[0].double(), x.double().sum(), rtol=1e-5, atol=1e-3)


def test_sums_means_and_losses_to_one_number_are_the_same_on_any_thread_count():
    x = torch.rand(BATCH, generator=torch.Generator().manual_seed(2))
    y = torch.rand(BATCH, generator=torch.Generator().manual_seed(3))
    for compute in (
        lambda: x.sum(),
        lambda: x.mean(),
        lambda: x.sum((0, 1, 2, 3), keepdim=True),
        lambda: nn.functional.mse_loss(x, y),
        lambda: torch.linalg.vector_norm(x),
    ):
        assert_all_equal(on_each_thread_count(compute))
    with ThreadInvariant():
        assert torch.allclose(nn.functional.mse_loss(x, y), ((x - y) ** 2).mean(), rtol=1e-5)
        assert x.sum((0, 1, 2, 3), keepdim=True).shape == (1, 1, 1, 1)
        assert x.sum(dim=(0, 2)).shape == (1, 28)


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(32, 1, 4, 2, 1),  # the factorized decoder's last layer
        nn.ConvTranspose2d(64, 32, 4, 2, 1),
        nn.Conv2d(1, 1, 1),  # the lossy decoder's head
        nn.Conv2d(1, 32, 4, 2, 1),
    ],
    ids=lambda layer: f"{type(layer).__name__}{tuple(layer.weight.shape)}",
)
def test_a_convolution_s_gradients_are_the_same_on_any_thread_count_and_pytorch_s(layer):
    torch.manual_seed(0)
    channels = layer.in_channels
    side = 28 if channels == 1 else 7 if channels == 64 else 14
    x = torch.randn(128, channels, side, side, requires_grad=True)
    grad = torch.randn_like(layer(x))

    def gradients():
        return torch.cat([g.flatten() for g in torch.autograd.grad(
            layer(x), [x, layer.weight, layer.bias], grad)])  # fmt: skip

    results = on_each_thread_count(gradients)
    assert_all_equal(results)
    plain = torch.cat([g.flatten() for g in torch.autograd.grad(
        layer(x), [x, layer.weight, layer.bias], grad)])  # fmt: skip
    assert torch.allclose(results[0], plain, rtol=1e-4, atol=1e-3)


def test_a_linear_layer_s_gradients_over_a_batch_s_pixels_are_the_same_on_any_thread_count():
    """The pixel head's last layer, 32 to 12, over a batch of 128 digits' 100,352 pixels: its
    weight gradient sums over every pixel (on an AMD EPYC, 3 threads gave other bits)."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 12)
    x = torch.randn(128 * 784, 32, requires_grad=True)
    grad = torch.randn(128 * 784, 12)

    def gradients():
        return torch.cat([g.flatten() for g in torch.autograd.grad(
            layer(x), [x, layer.weight, layer.bias], grad)])  # fmt: skip

    assert_all_equal(on_each_thread_count(gradients))


def test_other_operations_pass_through_untouched():
    x = torch.randn(BATCH, generator=torch.Generator().manual_seed(4))
    conv = nn.Conv2d(1, 8, 3, padding=1)
    with ThreadInvariant():
        inside = (x * 2 + 1, conv(x), x.sum(dim=(1, 2, 3)), torch.sigmoid(x[:10]))
    outside = (x * 2 + 1, conv(x), x.sum(dim=(1, 2, 3)), torch.sigmoid(x[:10]))
    for a, b in zip(inside, outside, strict=True):
        assert torch.equal(a, b)
