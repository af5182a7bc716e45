import re

import pytest
import torch

from mnist_vae.model import VAEConfig
from mnist_vae.training import (
    TrainingDiverged,
    evaluate,
    fit,
    lr_schedule,
    resolve_device,
    seeded_model,
    train_epoch,
)


def _train(seed: int, images: torch.Tensor):
    model = seeded_model(VAEConfig(latent_dim=4), seed)
    history = fit(
        model, images[:48], images[48:], epochs=2, batch_size=16, lr=1e-3, seed=seed, progress=False
    )
    return model, history


def _images() -> torch.Tensor:
    return torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(123))


def test_same_seed_gives_identical_weights_and_metrics():
    a, history_a = _train(0, _images())
    b, history_b = _train(0, _images())
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert history_a == history_b


def test_another_seed_gives_other_weights():
    a, _ = _train(0, _images())
    b, _ = _train(1, _images())
    assert not torch.equal(a.to_mean.weight, b.to_mean.weight)


def test_history_reports_every_epoch_with_consistent_parts():
    _, history = _train(0, _images())
    assert [m.epoch for m in history] == [1, 2]
    for m in history:
        assert abs(m.train_loss - (m.train_recon + m.train_kl)) < 1e-3
        assert abs(m.test_loss - (m.test_recon + m.test_kl)) < 1e-3


def test_training_lowers_the_loss():
    images = _images()
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    before = evaluate(model, images)["loss"]
    fit(model, images, images, epochs=3, batch_size=16, lr=1e-3, progress=False)
    assert evaluate(model, images)["loss"] < before


def test_evaluate_is_deterministic_and_size_weighted():
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    images = _images()
    assert evaluate(model, images, batch_size=64) == evaluate(model, images, batch_size=64)
    # the single-sample estimate differs with batching, but is an average either way
    whole = evaluate(model, images, batch_size=64)["loss"]
    split = evaluate(model, images, batch_size=40)["loss"]
    assert abs(whole - split) / whole < 0.05


def test_cosine_schedule_falls_from_lr_to_zero_and_constant_stays():
    def lrs(schedule: str) -> list[float]:
        optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.004)
        scheduler = lr_schedule(optimizer, schedule, total_steps=4)
        seen = []
        for _ in range(5):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert lrs("cosine") == pytest.approx(
        [0.004, 0.004 * (1 + 2**-0.5) / 2, 0.002, 0.004 * (1 - 2**-0.5) / 2, 0.0]
    )
    assert lrs("constant") == [0.004] * 5
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lrs("step")


def test_the_schedule_changes_training():
    images = _images()
    constant = seeded_model(VAEConfig(latent_dim=4), 0)
    cosine = seeded_model(VAEConfig(latent_dim=4), 0)
    for model, schedule in ((constant, "constant"), (cosine, "cosine")):
        fit(model, images, images, epochs=2, batch_size=16, lr=1e-3, schedule=schedule,
            progress=False)  # fmt: skip
    assert not torch.equal(constant.to_mean.weight, cosine.to_mean.weight)


def test_device_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"no CUDA device; set train\.device to 'auto' or 'cpu'"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_bf16_autocast_trains_with_a_float32_loss():
    images = _images()
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    history = fit(model, images[:48], images[48:], epochs=1, batch_size=16, lr=1e-3, bf16=True,
                  progress=False)  # fmt: skip
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(history[0].train_loss))
    plain = seeded_model(VAEConfig(latent_dim=4), 0)
    fit(plain, images[:48], images[48:], epochs=1, batch_size=16, lr=1e-3, progress=False)
    assert not torch.equal(plain.to_mean.weight, model.to_mean.weight)  # bf16 did run


def test_a_nan_loss_stops_training_with_where_and_what_to_try():
    images = _images()
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        images = images.clone()
        images[20] = float("nan")  # the second batch of 16 holds it
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(TrainingDiverged) as error:
        train_epoch(model, optimizer, images, 16, "bce", torch.Generator().manual_seed(0),
                    progress=False, epoch=3)  # fmt: skip
    message = str(error.value)
    assert "the training loss became nan at epoch 3, batch " in message
    assert re.search(r"batch [2-4] of 4", message)  # counted even without a progress bar
    assert " of 4 (learning rate 0.001); try a lower train.lr" in message
    # the batches before it did train; the poisoned one never reached the weights
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
