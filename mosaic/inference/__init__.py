"""Running a trained model: the sampler, the held-out attention (mechanism) evaluation and its scores,
the image metrics' bounds."""
