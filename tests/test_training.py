import re

import pytest
import torch

from mnist_vae.errors import ParamsError
from mnist_vae.model.vae import VAEConfig
from mnist_vae.params import Params, TrainParams
from mnist_vae.training.distributed import Cluster
from mnist_vae.training.loop import (
    EpochMetrics,
    TrainingDiverged,
    fit,
    held_out_loss,
    lr_schedule,
    plan_training,
    resolve_device,
    seeded_model,
    train_epoch,
)
from mnist_vae.training.losses import LossParts


def _params(seed: int = 0, **train) -> Params:
    settings = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "device": "cpu", "loss": "bce", **train}
    return Params(latent_dim=4, seed=seed, train=TrainParams(**settings))


def _train(seed: int, images: torch.Tensor):
    model = seeded_model(VAEConfig(latent_dim=4), seed)
    history = fit(model, images[:48], images[48:], _params(seed), progress=False).history
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
        for parts in (m.train, m.test):
            assert abs(parts.loss - (parts.recon + parts.kl)) < 1e-3


def test_epoch_metrics_are_the_history_columns_and_read_back():
    row = EpochMetrics(3, LossParts(9.0, 7.0, 2.0), LossParts(10.0, 8.0, 2.0))
    assert list(row.as_dict()) == [
        "epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl"
    ]  # fmt: skip
    assert EpochMetrics.from_dict(row.as_dict()) == row


def test_training_lowers_the_loss():
    images = _images()
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    before = held_out_loss(model, images, "bce", seed=0).loss
    fit(model, images, images, _params(epochs=3), progress=False)
    assert held_out_loss(model, images, "bce", seed=0).loss < before


def test_held_out_loss_is_deterministic_and_size_weighted():
    model = seeded_model(VAEConfig(latent_dim=4), 0)
    images = _images()

    def loss(batch_size: int) -> LossParts:
        return held_out_loss(model, images, "bce", seed=0, batch_size=batch_size)

    assert loss(64) == loss(64)
    # the single-sample estimate differs with batching, but is an average either way
    assert abs(loss(64).loss - loss(40).loss) / loss(64).loss < 0.05


@pytest.mark.parametrize(
    ("decoder", "loss"), [("factorized", "bce"), ("autoregressive", "logistic_mixture")]
)
def test_decoding_in_smaller_batches_gives_the_same_held_out_loss_bit_for_bit(decoder, loss):
    config = VAEConfig(latent_dim=4, arch="fast", decoder=decoder, likelihood=loss)
    model = seeded_model(config, 0)
    images = torch.round(_images() * 255) / 255

    def parts(decode_batch: int) -> LossParts:
        return held_out_loss(model, images, loss, 0, batch_size=40, decode_batch=decode_batch)

    whole = parts(40)  # each noise batch decoded at once: the figure as first defined
    assert parts(7) == whole and parts(16) == whole
    assert held_out_loss(model, images, loss, 1, batch_size=40) != whole  # other noise


def test_the_plan_is_what_runs_on_one_process_on_the_cpu():
    plan = plan_training(TrainParams(batch_size=128, lr=3e-3, device="cpu"), Cluster(), 60_000)
    assert (plan.batch_size, plan.lr, plan.effective_batch_size) == (128, 3e-3, 128)
    assert plan.steps_per_epoch == 469
    assert plan.as_params() == {
        "train.device_used": "cpu", "train.processes": 1,
        "train.effective_batch_size": 128, "train.effective_lr": 3e-3,
    }  # fmt: skip
    assert ", batch 128, lr 0.003, 469 steps per epoch" in plan.describe()


def test_on_cuda_the_plan_scales_batch_and_lr_and_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    params = TrainParams(batch_size=128, lr=3e-3, cuda_batch_scale=4)
    plan = plan_training(params, Cluster(rank=1, world_size=2, local_rank=1), 60_000)
    assert plan.device == torch.device("cuda", 1)
    assert (plan.batch_size, plan.lr) == (512, pytest.approx(6e-3))
    assert plan.effective_batch_size == 1024
    assert plan.steps_per_epoch == 59  # 30,000 images per process, 512 at a time
    assert plan.as_params()["train.effective_batch_size"] == 1024
    assert plan.as_params()["train.effective_lr"] == pytest.approx(6e-3)
    assert "x 2 processes (nccl), effective batch 2 x 512 = 1024, lr 0.006" in plan.describe()


def test_a_batch_larger_than_a_process_share_is_a_params_error():
    with pytest.raises(ParamsError, match=r"train\.batch_size = 64 is larger than the 50 "):
        plan_training(TrainParams(batch_size=64, device="cpu"), Cluster(0, 2, 0), 100)
    plan_training(TrainParams(batch_size=50, device="cpu"), Cluster(0, 2, 0), 100)


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
        fit(model, images, images, _params(schedule=schedule), progress=False)
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
    history = fit(model, images[:48], images[48:], _params(epochs=1, bf16=True),
                  progress=False).history  # fmt: skip
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(history[0].train.loss))
    plain = seeded_model(VAEConfig(latent_dim=4), 0)
    fit(plain, images[:48], images[48:], _params(epochs=1), progress=False)
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
