"""Evaluation of frozen embeddings: linear probe, weighted kNN, feature extraction."""

from .features import extract_features
from .knn import knn_accuracy, knn_predictions
from .linear import linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_predictions", "linear_probe"]
