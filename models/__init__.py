"""Flax NNX models of the harness: the LRA encoder classifier and the attention variants (models.attention)."""
from models.encoder import Classifier, Encoder, EncoderConfig, count_params

__all__ = ["Classifier", "Encoder", "EncoderConfig", "count_params"]
