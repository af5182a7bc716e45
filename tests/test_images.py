import torch
from PIL import Image

from mnist_vae.images import originals_over_reconstructions, save_each, save_grid, side_by_side


def test_grid_rows_alternate_originals_and_reconstructions():
    originals = torch.zeros(5, 1, 2, 2)
    recons = torch.ones(5, 1, 2, 2) * 0.5
    grid, nrow = originals_over_reconstructions(originals, recons, nrow=3)
    assert nrow == 3
    assert grid.shape[0] == 12  # two rows of originals, two of reconstructions, padded to 3
    assert torch.equal(grid[0:3], originals[0:3])
    assert torch.equal(grid[3:6], recons[0:3])
    assert torch.equal(grid[6:8], originals[3:5])
    assert torch.equal(grid[8], torch.ones(1, 2, 2))  # white filler


def test_png_files(tmp_path):
    images = torch.rand(6, 1, 28, 28)
    grid = save_grid(images, tmp_path / "grid.png", nrow=3)
    with Image.open(grid) as im:
        assert im.size == (3 * 30 + 2, 2 * 30 + 2)
    paths = save_each(side_by_side(images, images), tmp_path / "pairs", "pair")
    assert [p.name for p in paths][:2] == ["pair_0000.png", "pair_0001.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (56, 28)
