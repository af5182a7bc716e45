"""Everything that writes or reads bytes: the container format both codecs write
(:mod:`.container`), the lossless bits-back codec (:mod:`.lossless`) on integer-exact
networks (:mod:`.fixed_point`, :mod:`.exact_likelihoods`), the lossy codec (:mod:`.lossy`),
the classic and learned codecs we measure against, and the rate-distortion sweeps.
Imports the model, the data and the foundations; never evaluation or tracking."""
