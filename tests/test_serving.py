"""The pyfunc model's modes and its answers to bad requests (no server: see test_pipeline)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from mnist_vae.model.vae import VAEConfig, build_model, save_model
from mnist_vae.tracking.pyfunc import signature
from mnist_vae.tracking.serving import MAX_ROWS, VAEPyfunc

LATENT = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> VAEPyfunc:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(build_model(VAEConfig(latent_dim=LATENT)), folder)
    return VAEPyfunc().load_folder(folder)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 28, 28), dtype=np.float32)


def _is_image_batch(out: np.ndarray, n: int) -> bool:
    return out.shape == (n, 28, 28) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1


def test_decode_turns_latent_vectors_into_images(served):
    out = served.predict(None, np.zeros((4, LATENT), np.float32), {"mode": "decode"})
    assert _is_image_batch(out, 4)
    z = torch.zeros(4, LATENT)
    assert np.allclose(out, torch.sigmoid(served.model.decode(z)).squeeze(1).detach().numpy())
    # decode is the default mode; JSON lists work as well as arrays
    assert np.allclose(served.predict(None, [[0.0] * LATENT] * 4), out)


def test_encode_gives_the_posterior_mean_and_log_variance(served):
    images = _images(5)
    out = served.predict(None, images, {"mode": "encode"})
    assert set(out) == {"mean", "logvar"}
    assert out["mean"].shape == out["logvar"].shape == (5, LATENT)
    mean, logvar = served.model.encode(torch.from_numpy(images)[:, None])
    assert np.allclose(out["mean"], mean.detach().numpy(), atol=1e-6)
    assert np.allclose(out["logvar"], logvar.detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 784), (2, 1, 28, 28)])
def test_reconstruct_accepts_images_with_or_without_channel_or_flat(served, shape):
    images = _images(2).reshape(shape)
    out = served.predict(None, images, {"mode": "reconstruct"})
    assert _is_image_batch(out, 2)
    expected = served.model.reconstruct(torch.from_numpy(_images(2))[:, None]).squeeze(1)
    assert np.allclose(out, expected.numpy(), atol=1e-6)


def test_sample_draws_n_images_repeatably_from_a_seed(served):
    def sample(seed: int) -> np.ndarray:
        return served.predict(None, [], {"mode": "sample", "n": 6, "seed": seed})

    first = sample(1)
    assert _is_image_batch(first, 6)
    assert np.array_equal(first, sample(1))
    assert not np.array_equal(first, sample(2))


@pytest.mark.parametrize(
    ("model_input", "params", "message"),
    [
        (np.zeros((2, LATENT + 1)), {"mode": "decode"}, f"latent vectors of shape n x {LATENT}"),
        (np.zeros(LATENT), {"mode": "decode"}, f"latent vectors of shape n x {LATENT}"),
        (np.zeros((0, LATENT)), {"mode": "decode"}, "at least one latent vector"),
        ([[0.0, float("nan"), 0.0]], {"mode": "decode"}, "NaN or infinite"),
        ([[0.0, float("inf"), 0.0]], {"mode": "decode"}, "NaN or infinite"),
        ([[0.0] * LATENT, [0.0]], {"mode": "decode"}, "rectangular array of numbers"),
        ([["a", "b", "c"]], {"mode": "decode"}, "rectangular array of numbers"),
        (np.zeros((MAX_ROWS + 1, LATENT)), {"mode": "decode"}, f"at most {MAX_ROWS}"),
        (np.zeros((2, 27, 28)), {"mode": "encode"}, "images of shape n x 28 x 28"),
        (np.full((2, 28, 28), 2.0), {"mode": "reconstruct"}, "pixel values in [0, 1]"),
        (np.zeros((2, LATENT)), {"mode": "decoder"}, "unknown mode 'decoder'"),
        ([], {"mode": "sample", "n": MAX_ROWS + 1}, f"at most {MAX_ROWS}"),
        ([], {"mode": "sample", "n": 0}, "at least one sample"),
        ([], {"mode": "sample", "n": 2, "seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_requests_are_refused_with_what_was_expected(served, model_input, params, message):
    with pytest.raises(MlflowException, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        served.predict(None, model_input, params)
    assert e.value.get_http_status_code() == 400


def test_the_signature_declares_the_request_params():
    params = {p.name: p for p in signature().params.params}
    assert params["mode"].default == "decode"
    assert params["n"].dtype.name == params["seed"].dtype.name == "long"


def test_autoregressive_pictures_take_turns_and_answer_as_one_at_a_time(tmp_path):
    """Requests in threads, as MLflow's server runs them: the same pictures as in turn. The
    turn is held only by the autoregressive modes (bench/serving.py measures what it saves)."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    config = VAEConfig(latent_dim=LATENT, likelihood="logistic_mixture", decoder="autoregressive")
    save_model(build_model(config), tmp_path / "ar")
    served = VAEPyfunc().load_folder(tmp_path / "ar")
    z = np.random.default_rng(1).standard_normal((4, 2, LATENT)).astype(np.float32)
    alone = [served.predict(None, rows, {"mode": "decode"}) for rows in z]
    with ThreadPoolExecutor(4) as threads:
        side_by_side = list(threads.map(lambda r: served.predict(None, r, {"mode": "decode"}), z))
    assert all(np.array_equal(a, b) for a, b in zip(alone, side_by_side, strict=True))
    assert isinstance(served._picture_turn, type(threading.Lock()))
    factorized = VAEPyfunc().load_folder(_factorized(tmp_path))
    assert isinstance(factorized._picture_turn, contextlib.nullcontext)


def _factorized(folder):
    save_model(build_model(VAEConfig(latent_dim=LATENT)), folder / "factorized")
    return folder / "factorized"
