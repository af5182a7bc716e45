"""The networks: the convolutional VAE and its configuration (:mod:`.vae`), the decoder's
distribution over pixel values (:mod:`.likelihoods`, :mod:`.autoregressive`), the lossy
codec's decoder head, the latent sampler, and the self-describing model folder
(:mod:`.folder`). Imports only :mod:`mnist_vae.data` and the foundations."""
