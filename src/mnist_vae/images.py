"""Image files: grids and single PNGs, via torchvision.utils."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_png, read_file, write_png
from torchvision.utils import save_image


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """One PNG tiling ``images`` (``[N, C, H, W]`` in [0, 1]) ``nrow`` to a row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def save_each(images: torch.Tensor, folder: str | Path, prefix: str) -> list[Path]:
    """One PNG per image, ``{prefix}_{i:04d}.png``, numbered from 0."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{prefix}_{i:04d}.png")
        save_image(image, paths[-1])
    return paths


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Pairs ``[N, C, H, 2W]``: each left image with its right one beside it."""
    return torch.cat([left, right], dim=-1)


def originals_over_reconstructions(
    originals: torch.Tensor, reconstructions: torch.Tensor, nrow: int
) -> tuple[torch.Tensor, int]:
    """Interleave rows: ``nrow`` originals, then their ``nrow`` reconstructions, and so on.

    Returns the images in grid order and the row length to tile them with.
    """
    nrow = min(nrow, len(originals))
    rows = []
    for start in range(0, len(originals), nrow):
        chunk_o, chunk_r = originals[start : start + nrow], reconstructions[start : start + nrow]
        pad = nrow - len(chunk_o)  # the last rows may be short: fill with blank (white) tiles
        if pad:
            blank = torch.ones((pad, *chunk_o.shape[1:]), dtype=chunk_o.dtype)
            chunk_o, chunk_r = torch.cat([chunk_o, blank]), torch.cat([chunk_r, blank])
        rows += [chunk_o, chunk_r]
    return torch.cat(rows), nrow


def save_strip(pixels: torch.Tensor, path: str | Path) -> Path:
    """8-bit grey images ``uint8 [N, H, W]`` side by side in one lossless PNG, without gaps:
    ``load_strip`` gives back the very same pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.cat(list(pixels), dim=1).unsqueeze(0).contiguous(), str(path))
    return path


def load_strip(path: str | Path, side: int) -> torch.Tensor:
    """``save_strip``'s images, ``uint8 [N, side, side]``."""
    return torch.stack(load_grey(path).split(side, dim=1))


def load_grey(path: str | Path) -> torch.Tensor:
    """A PNG as 8-bit grey pixels, ``uint8 [H, W]``."""
    return decode_png(read_file(str(path)), ImageReadMode.GRAY)[0]
