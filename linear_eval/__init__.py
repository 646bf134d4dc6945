"""Evaluation of frozen embeddings: feature extraction, linear probe, weighted kNN, retrieval."""

from .features import extract_features
from .knn import knn_accuracy, knn_predictions
from .linear import linear_probe
from .retrieval import map_at_r, nmi, r_precision, recall_at_k, retrieval_metrics

__all__ = [
    "extract_features", "knn_accuracy", "knn_predictions", "linear_probe",
    "map_at_r", "nmi", "r_precision", "recall_at_k", "retrieval_metrics",
]
