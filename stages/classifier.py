"""Stage classifier: train the small CNN that judges sample quality.

Reads: classifier.*   Writes: data/classifier/ (model.pt + config.json),
data/metrics/classifier.json (its test accuracy, for dvc metrics).
"""

from pathlib import Path

from mnist_vae.data import load_images
from mnist_vae.evaluation.classifier import accuracy, save_classifier, train_classifier
from mnist_vae.params import load_params
from mnist_vae.stage import run, write_metrics

DATA = Path("data/mnist")
OUT = Path("data/classifier")
METRICS = Path("data/metrics/classifier.json")


def main() -> None:
    params = load_params().classifier
    train_x, train_y = load_images(DATA, "train", params.train_limit, params.seed)
    test_x, test_y = load_images(DATA, "test")
    model = train_classifier(
        train_x, train_y,
        epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, seed=params.seed,
    )  # fmt: skip
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"classifier: test accuracy {test_accuracy:.4f} on {len(test_x)} images", flush=True)

    save_classifier(model, OUT)
    write_metrics(METRICS, {"test_accuracy": test_accuracy})


if __name__ == "__main__":
    run(main, "classifier")
