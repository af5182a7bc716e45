import torch

from mnist_vae.evaluation.classifier import (
    FeatureExtractor,
    accuracy,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)


def _toy_digits(n: int = 200):
    """Two separable 'digits': bright top half (0) or bright bottom half (1)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    images[labels == 0, :, :14] += 0.8
    images[labels == 1, :, 14:] += 0.8
    return images, labels


def test_training_is_seeded_and_learns():
    images, labels = _toy_digits()
    a = train_classifier(images, labels, epochs=2, batch_size=32, lr=1e-3, seed=0, progress=False)
    b = train_classifier(images, labels, epochs=2, batch_size=32, lr=1e-3, seed=0, progress=False)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert accuracy(a, images, labels) > 0.95


def test_features_round_trip(tmp_path):
    images, labels = _toy_digits(20)
    model = train_classifier(
        images, labels, epochs=1, batch_size=10, lr=1e-3, seed=0, progress=False
    )
    save_classifier(model, tmp_path)
    loaded = load_classifier(tmp_path)
    assert torch.equal(predict(loaded, images), predict(model, images))
    features = FeatureExtractor(loaded)(images)
    assert features.shape == (20, loaded.num_features) and (features >= 0).all()
