"""Draw the pixel head's pass schedules: docs/assets/passes.png (the Compression page).

    python docs/assets/draw_passes.py

Each panel is the top-left 8 x 8 pixels of a digit, each pixel numbered with the pass that
decodes it (``mnist_vae.model.autoregressive.pass_of_pixels``, the code the model runs).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from mnist_vae.model.autoregressive import pass_of_pixels
from mnist_vae.params import PASS_SCHEDULES

CORNER = 8


def main() -> None:
    figure = Figure(figsize=(2.2 * len(PASS_SCHEDULES), 2.6), layout="constrained")
    for ax, schedule in zip(figure.subplots(1, len(PASS_SCHEDULES)), PASS_SCHEDULES, strict=True):
        passes = pass_of_pixels(schedule, 28).view(28, 28)[:CORNER, :CORNER]
        count = int(pass_of_pixels(schedule, 28).max()) + 1
        ax.imshow(passes, cmap="viridis", vmin=0, vmax=min(count, CORNER * CORNER) - 1)
        for row in range(CORNER):
            for col in range(CORNER):
                value = int(passes[row, col])
                light = value > 0.6 * (min(count, CORNER * CORNER) - 1)
                ax.text(col, row, str(value), ha="center", va="center", fontsize=6,
                        color="black" if light else "white")  # fmt: skip
        ax.set_title(f"{schedule}\n{count} passes", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(__file__).with_name("passes.png")
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
