"""Evaluation of frozen embeddings: feature extraction, linear probes, weighted kNN, retrieval.

Protocols (docs/evaluation.md): ``linear_probe`` (fast: L-BFGS logistic regression on
standardised features, C chosen on val), ``standard_linear_probe`` (SGD linear layer on a frozen
backbone with augmentation, Lightning), ``knn_accuracy`` and the retrieval metrics.
"""

from .features import extract_features
from .knn import knn_accuracy, knn_predictions
from .linear import linear_probe
from .models import load_backbone
from .retrieval import map_at_r, nmi, r_precision, recall_at_k, retrieval_metrics
from .standard import standard_linear_probe, standard_transforms

__all__ = [
    "extract_features", "knn_accuracy", "knn_predictions", "linear_probe", "load_backbone",
    "map_at_r", "nmi", "r_precision", "recall_at_k", "retrieval_metrics",
    "standard_linear_probe", "standard_transforms",
]
