"""Fitting the model: the training loop and its plan (``loop``), the loss and its
bounds (``losses``), resumable checkpoints and multi-process training (torchrun).
Imports the model, the data and the foundations."""
