"""Everything that writes or reads bytes: the container format both codecs write
(``container``), the lossless bits-back codec (``lossless``) on integer-exact
networks (``fixed_point``, ``exact_likelihoods``), the lossy codec (``lossy``),
the classic and learned codecs we measure against, and the rate-distortion sweeps.
Imports the model, the data and the foundations; never evaluation or tracking."""
