"""Measuring a trained model: likelihood bounds and sample quality (``metrics``), the
digit classifier behind them, latent-space pictures, and the overview figure that puts the
samples next to the codecs' curves. Imports compression (for the curves), training (for
the loss), the model, the data and the foundations."""
