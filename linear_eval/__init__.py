"""Evaluation of frozen embeddings: feature extraction, the fast linear probe, weighted kNN, retrieval.

Depends on torch, numpy and scikit-learn only (faiss optional, for ``knn_accuracy(backend="faiss")``);
nothing here imports ``ssl_transfer``, Lightning, lightly or torchvision. Protocols
(docs/evaluation.md): ``linear_probe`` (L-BFGS logistic regression on standardised features, run
to a gradient tolerance, C chosen on val inside a grid that is extended until the choice is
interior), ``knn_accuracy`` and the retrieval metrics. Networks are loaded by
``ssl_transfer.models.torchvision_models.load_backbone``; the SGD probe with augmentation is
``ssl_transfer.evaluation.standard.standard_linear_probe``.
"""

from .features import extract_features
from .knn import knn_accuracy, knn_predictions
from .linear import linear_probe
from .retrieval import map_at_r, nmi, r_precision, recall_at_k, retrieval_metrics

__all__ = [
    "extract_features", "knn_accuracy", "knn_predictions", "linear_probe",
    "map_at_r", "nmi", "r_precision", "recall_at_k", "retrieval_metrics",
]
