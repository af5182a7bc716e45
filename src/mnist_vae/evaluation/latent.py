"""Pictures of the latent space: traversals, interpolations and a 2-D map of the test set."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

from ..images import save_grid
from ..model.vae import ConvVAE


@torch.no_grad()
def traversal(model: ConvVAE, z: torch.Tensor, span: float, steps: int) -> torch.Tensor:
    """Decode ``z`` (``[latent_dim]``) with one dimension at a time swept over [-span, span]
    while the others stay fixed: ``[latent_dim * steps, C, H, W]``, one row per dimension
    (the static form of the explorer notebook's sliders)."""
    dims = z.numel()
    codes = z.reshape(1, 1, dims).repeat(dims, steps, 1)
    values = torch.linspace(-span, span, steps, device=z.device)
    for d in range(dims):
        codes[d, :, d] = values
    return model.mean_image(codes.flatten(0, 1))


def interpolation_grid(model: ConvVAE, starts: torch.Tensor, ends: torch.Tensor, steps: int):
    """``[pairs * steps, C, H, W]``: each row walks from a start image to its end image."""
    return model.interpolate(starts, ends, steps).flatten(0, 1)


def project_2d(means: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The two latent dimensions themselves when there are two (or one, padded), otherwise
    the first two principal components of the centred means."""
    if means.shape[1] <= 2:
        return torch.nn.functional.pad(means, (0, 2 - means.shape[1])), "latent dimension"
    centred = means - means.mean(0)
    _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
    return (centred.double() @ v[:2].T).float(), "principal component"


def save_latent_map(means: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Scatter plot of the test set's latent means in 2-D, coloured by digit."""
    points, axis = project_2d(means.cpu())
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.subplots()
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels.cpu(), cmap="tab10", s=2, alpha=0.6)
    ax.legend(*scatter.legend_elements(), title="digit", loc="best", fontsize="small")
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_title(f"Latent means of {len(points)} test images")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path


@torch.no_grad()
def save_pictures(
    model: ConvVAE,
    images: torch.Tensor,
    labels: torch.Tensor,
    folder: str | Path,
    *,
    span: float,
    steps: int,
    pairs: int,
    interpolation_steps: int,
) -> list[Path]:
    """``traversal.png`` around the first image's code, ``interpolation.png`` between the
    first ``pairs`` images and the next ``pairs``, and ``latent_map.png`` of all images."""
    folder = Path(folder)
    z0, _ = model.encode(images[:1])
    pairs = min(pairs, len(images) // 2)
    return [
        save_grid(traversal(model, z0[0], span, steps), folder / "traversal.png", nrow=steps),
        save_grid(
            interpolation_grid(
                model, images[:pairs], images[pairs : 2 * pairs], interpolation_steps
            ),
            folder / "interpolation.png",
            nrow=interpolation_steps,
        ),
        save_latent_map(model.encode(images)[0], labels, folder / "latent_map.png"),
    ]
