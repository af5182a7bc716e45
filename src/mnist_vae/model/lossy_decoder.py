"""The lossy codec's own decoder: a code's picture, trained for squared error.

The VAE's decoder is trained for likelihood: given the pixels, how probable they are. The
lossy codec sends no pixels, only the quantized code, and what it should decode to is the
picture closest, in squared error, to the digits that share the code: their average over
the code's cell. For the autoregressive decoder the model's own picture of a code (each
pixel its expected value given the pixels drawn before it) is far from that (README:
Compression, Lossy).

``LossyDecoder`` starts as a copy of the VAE's decoder (its dense layers and
transposed convolutions), reads the cell's centroid and the rate level (a learned offset
per level on the first layer: a coarse cell holds more digits than a fine one around the
same point) and ends in one sigmoid channel. ``lossy.fit_lossy_decoder`` trains it
after the VAE, on the training digits' codes at every level; its weights are saved with
the VAE's, so every copy of the model decodes the same pictures.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class LossyDecoder(nn.Module):
    """``(centroids [N, latent_dim], levels [N]) -> pictures [N, 1, H, W]`` in [0, 1]."""

    def __init__(self, decoder: nn.Sequential, levels: int) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(decoder)  # a copy: fine-tuning it leaves the VAE alone
        first = self.trunk[0]
        last = [m for m in self.trunk if isinstance(m, nn.ConvTranspose2d)][-1]
        self.level = nn.Embedding(levels, first.out_features)
        nn.init.zeros_(self.level.weight)  # at first, the VAE's decoder at every level
        self.head = nn.Conv2d(last.out_channels, 1, 1)

    def forward(self, z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        h = self.trunk[0](z) + self.level(levels)
        return torch.sigmoid(self.head(self.trunk[1:](h)))
