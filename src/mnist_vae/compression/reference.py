"""The originals a sweep measures decoded images against, with SSIM's share of them done once.

A rate-distortion sweep compares many decoded sets with the same originals: 26 levels of
ours, PCA's envelope. SSIM (``distortion``, torchmetrics) convolves five maps per image
with its 11x11 Gaussian window: the decoded image, the original, their squares and their
product. Two things make that cheaper here, with the same numbers:

* Two of the five maps, the original and its square, are the same for every decoded set,
  so a ``Reference`` convolves them once and keeps the original's local means and
  variances.
* torchmetrics convolves a batch of one-channel images, a case oneDNN runs at a tenth of
  the speed it runs the same windows as a depthwise convolution, each image a channel of
  its own (``_window_means``): 35 ms against 3 ms for 1,500 maps (2-core Xeon), with
  every output equal, bit for bit, under the pinned kernels and native ones, on one
  thread and two.

The figures are torchmetrics' own, bit for bit (tests/test_reference.py): the same kernel,
padding and window sums per image, and the same operations in the same order after them.
In the rate_distortion stage, SSIM took 60 of 129 s (2-core Xeon, py-spy) before.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image.ssim import _gaussian_kernel_2d

from .distortion import BATCH, _batches, psnr

# torchmetrics' defaults, with the data range of 8-bit pixels (``distortion``).
_SIGMA, _K1, _K2, _DATA_RANGE = 1.5, 0.01, 0.03, 255.0
_KERNEL = int(3.5 * _SIGMA + 0.5) * 2 + 1  # the Gaussian window's side, as torchmetrics sets it
_PAD = _KERNEL // 2
_C1, _C2 = pow(_K1 * _DATA_RANGE, 2), pow(_K2 * _DATA_RANGE, 2)


def _padded(images: torch.Tensor) -> torch.Tensor:
    return F.pad(images, (_PAD, _PAD, _PAD, _PAD), mode="reflect")


def _window_means(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The Gaussian window's weighted sums over padded maps ``[M, 1, H + 10, W + 10]``:
    ``[M, 1, H, W]``, each map a channel of one depthwise convolution."""
    m = len(maps)
    sums = F.conv2d(maps.view(1, m, *maps.shape[2:]), kernel.expand(m, -1, -1, -1), groups=m)
    return sums.view(m, 1, *sums.shape[2:])


class Reference:
    """Originals (uint8 ``N x H x W``) prepared for ``distortion`` of many decoded sets."""

    def __init__(self, originals: np.ndarray, batch: int = BATCH) -> None:
        self.originals, self.batch = originals, batch
        self._kernel = _gaussian_kernel_2d(1, [_KERNEL] * 2, [_SIGMA] * 2, torch.float32, "cpu")
        # Per batch: the padded originals, their local mean, its square, their local variance.
        self._parts: list[tuple[torch.Tensor, ...]] = []
        with torch.no_grad():
            for original, _ in _batches(originals, originals, batch):
                target = _padded(original)
                maps = _window_means(torch.cat((target, target * target)), self._kernel)
                mean, square = maps.split(len(target))
                mean_sq = mean.pow(2)
                self._parts.append((target, mean, mean_sq, torch.clamp(square - mean_sq, min=0.0)))

    def psnr(self, decoded: np.ndarray) -> float:
        """Mean PSNR (dB) of ``decoded`` against the originals (``distortion.psnr``)."""
        return psnr(self.originals, decoded, self.batch)

    @torch.no_grad()
    def ssim(self, decoded: np.ndarray) -> float:
        """Mean SSIM of ``decoded`` against the originals: torchmetrics' figure."""
        per_image = []
        pairs = _batches(self.originals, decoded, self.batch)
        for (_, pred), (target, mu_t, mu_t_sq, var_t) in zip(pairs, self._parts, strict=True):
            pred = _padded(pred)
            maps = _window_means(torch.cat((pred, pred * pred, pred * target)), self._kernel)
            mu_p, square, cross = maps.split(len(pred))
            mu_p_sq = mu_p.pow(2)
            mu_pt = mu_p * mu_t
            var_p = torch.clamp(square - mu_p_sq, min=0.0)
            upper = 2 * (cross - mu_pt) + _C2
            lower = (var_p + var_t) + _C2
            full = ((2 * mu_pt + _C1) * upper) / ((mu_p_sq + mu_t_sq + _C1) * lower)
            per_image.append(full.reshape(len(full), -1).mean(-1))
        return float(torch.cat(per_image).double().mean())

    def distortion(self, decoded: np.ndarray) -> dict[str, float]:
        """Mean PSNR (dB) and mean SSIM, as ``distortion.distortion`` gives them."""
        return {"psnr": self.psnr(decoded), "ssim": self.ssim(decoded)}
