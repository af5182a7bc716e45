"""The model code MLflow stores with the pyfunc model (models-from-code): it names the
model object, and ``serving.py`` holds its logic."""

from mlflow.models import set_model

from mnist_vae.tracking.serving import VAEPyfunc

set_model(VAEPyfunc())
