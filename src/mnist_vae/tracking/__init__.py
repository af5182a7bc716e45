"""MLflow: the runs every stage logs to and the model registry (``runs``), the pyfunc
model that ``mlflow models serve`` runs (``pyfunc``, ``serving``), and the
accounts of a shared tracking server. The top of the package: it may import every other
part, and none of them imports it."""
