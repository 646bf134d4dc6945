"""Linear probe on frozen features (the ``fast`` protocol).

Features are standardised with statistics of the training features; a multinomial logistic
regression (scikit-learn, L-BFGS) is fitted for every inverse regularisation strength C; the C
with the best *validation* accuracy is kept and that model is evaluated once on the test split.
The test features are not looked at before the selection is final.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def linear_probe(
    train_x, train_y, val_x, val_y, test_x=None, test_y=None,
    Cs: Sequence[float] = (0.01, 0.1, 1.0), max_iter: int = 200, seed: int = 0,
) -> dict:
    """Fit on train, choose C on val, then evaluate the chosen model on test once.

    Returns a dict with ``val_acc`` per C, the chosen ``C``, its ``val_acc_best``,
    ``train_acc``, ``test_acc`` (None without test data) and the hyper-parameters used.
    """
    train_x, val_x = _np(train_x).astype(np.float32), _np(val_x).astype(np.float32)
    train_y, val_y = _np(train_y), _np(val_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in train_y")
    if not Cs:
        raise ValueError("Cs must hold at least one regularisation value")
    scaler = StandardScaler().fit(train_x)
    tr, va = scaler.transform(train_x), scaler.transform(val_x)
    best: Optional[tuple[float, float, LogisticRegression]] = None
    val_accs = {}
    for C in sorted(Cs):
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(tr, train_y)
        acc = float(clf.score(va, val_y))
        val_accs[str(C)] = acc
        if best is None or acc > best[1]:
            best = (C, acc, clf)
    C, val_acc, clf = best
    out = {
        "C": C,
        "val_acc": val_accs,
        "val_acc_best": val_acc,
        "train_acc": float(clf.score(tr, train_y)),
        "test_acc": None,
        "params": {"Cs": list(map(float, Cs)), "max_iter": max_iter, "standardise": True,
                   "n_train": int(len(train_y)), "n_val": int(len(val_y))},
    }
    if test_x is not None:
        te = scaler.transform(_np(test_x).astype(np.float32))
        out["test_acc"] = float(clf.score(te, _np(test_y)))
        out["params"]["n_test"] = int(len(te))
    return out
