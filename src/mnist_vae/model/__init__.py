"""The networks: the convolutional VAE and its configuration (``vae``), the decoder's
distribution over pixel values (``likelihoods``, ``autoregressive``), the lossy
codec's decoder head, the latent sampler, and the self-describing model folder
(``folder``). Imports only ``mnist_vae.data`` and the foundations."""
