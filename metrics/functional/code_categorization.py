"""Categorization accuracy of simple classifiers on neural codes (DESIGN §4): k-means with
clusters mapped to labels, k-NN under Hamming distance, logistic regression. scikit-learn is
imported only when called.

Two protocols (``protocol=``):

- ``"reference"`` — the authors' code (LeavesLei/activation-code, ``run_*_encoding_properties.py``):
  k-means (``n_clusters`` = number of classes, ``random_state``) is fit on the *evaluated* codes
  themselves and its clusters are mapped one-to-one to those codes' labels (Hungarian assignment
  on the contingency table, ``linear_sum_assignment``); k-NN is scikit-learn's
  ``KNeighborsClassifier(n_neighbors=k, metric="hamming")``; logistic regression is
  ``OneVsOneClassifier(LogisticRegression(solver="liblinear"))``. Pair it with constant units
  dropped over train ∪ test (:func:`~actsparse.metrics.functional.hash_codes.drop_constant_units`),
  as the reference does. Use it to compare with the paper.
- ``"fit_predict"`` — every method is fit on the training codes and predicts the test codes
  (k-means clusters mapped by the training labels; deterministic Hamming k-NN with ties in
  training order; multinomial logistic regression). A held-out protocol: no test label is used.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from actsparse.metrics.functional.hash_codes import NeuralCodes, labels_array, packed_codes, unpack_codes

METHODS = ("kmeans", "knn", "logreg")
MAPPINGS = ("majority", "hungarian")
PROTOCOLS = ("reference", "fit_predict")


def _bits(codes: Any, packed: bool) -> np.ndarray:
    """Codes as bool ``[N, units]``. Bit-packed rows unpack to all ``8 * bytes`` bits: padding
    bits are 0 for every sample, so they change no distance, cluster or fit."""
    rows = packed_codes(codes, packed)  # validates
    if isinstance(codes, NeuralCodes):
        units = codes.units
    elif packed:
        units = 8 * rows.shape[1]
    else:
        units = codes.shape[1]
    return unpack_codes(torch.from_numpy(rows), units).numpy() if units else np.zeros((rows.shape[0], 0), dtype=bool)


def cluster_label_map(clusters: np.ndarray, labels: np.ndarray, n_clusters: int, n_classes: int,
                      mapping: str = "majority") -> np.ndarray:
    """Label index for each cluster id from the contingency table of ``(cluster, label)``.

    ``majority``: each cluster takes its most frequent label (ties: the smallest label index).
    ``hungarian``: a one-to-one assignment maximizing the matched samples
    (``scipy.optimize.linear_sum_assignment``); clusters left over when there are more
    clusters than classes fall back to their majority label.
    """
    table = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    label_of = table.argmax(1)
    if mapping == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(table, maximize=True)
        label_of[rows] = cols
    elif mapping != "majority":
        raise ValueError(f"Unknown cluster mapping {mapping!r}; choose from {', '.join(MAPPINGS)}.")
    return label_of


def knn_predict(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, k: int = 9,
                chunk: int = 2048) -> np.ndarray:
    """Majority label of the ``k`` nearest training codes under Hamming distance.

    Deterministic: equidistant neighbours are taken in training order; a tied vote goes to the
    smallest label index. Distances are exact (``|a| + |b| - 2 a·b`` in float32, exact below
    2**24 units). ``train_labels`` are indices ``0..C-1``.
    """
    a = torch.from_numpy(train).float()
    a_ones = a.sum(1)
    n_train, k = a.shape[0], min(k, a.shape[0])
    n_classes = int(train_labels.max()) + 1
    y = torch.from_numpy(train_labels)
    order = torch.arange(n_train, dtype=torch.int64)
    out = []
    for start in range(0, len(query), chunk):
        q = torch.from_numpy(query[start : start + chunk]).float()
        dist = (q.sum(1, keepdim=True) + a_ones - 2 * q @ a.T).round().to(torch.int64)
        key = dist * n_train + order  # distance first, then training index
        nearest = key.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(q), n_classes, dtype=torch.int64).scatter_add_(
            1, y[nearest], torch.ones_like(nearest))
        out.append(votes.argmax(1))  # first maximum: the smallest label index
    return torch.cat(out).numpy()


def code_categorization(
    train_codes: Any,
    train_labels: Any,
    test_codes: Any,
    test_labels: Any,
    packed: bool = False,
    methods: Sequence[str] = METHODS,
    n_clusters: int = 10,
    mapping: str = "majority",
    k: int = 9,
    seed: int = 0,
    n_init: int = 4,
    max_iter: int = 500,
    score_train: bool = False,
    threads: int | None = 1,
    protocol: str = "fit_predict",
) -> dict[str, torch.Tensor]:
    """Accuracy of each method on ``test_codes`` under ``protocol`` (module docstring); the
    details below are those of ``"fit_predict"``.

    - ``kmeans``: k-means (``n_clusters``, scikit-learn, seeded) on the training codes; each
      cluster is mapped to a label (``mapping``: ``majority`` or ``hungarian``, see
      :func:`cluster_label_map`); a test code gets its nearest cluster's label.
    - ``knn``: k-nearest neighbours (``k``) under Hamming distance (:func:`knn_predict`).
    - ``logreg``: multinomial logistic regression (L2, C = 1, lbfgs) on the 0/1 codes.

    Returns ``{method: accuracy}`` (0-dim float64 tensors); with ``score_train=True`` also
    ``train_<method>``: the same fitted models scored on the training codes (k-NN then counts
    each sample among its own neighbours).

    ``threads`` caps scikit-learn's BLAS/OpenMP pools during the fits (None: leave them). On
    small code sets, thread start-up and spinning dominate: on a 2-core machine one thread made
    k-means + logistic regression on 1,078 random codes 40x (6,000 units) to 100x (64 units) faster.

    Example:
        >>> train = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]])
        >>> acc = code_categorization(train, torch.tensor([0, 0, 1, 1]), torch.tensor([[1, 1, 1, 0]]),
        ...                           torch.tensor([0]), methods=("knn",), k=3)
        >>> acc["knn"]  # neighbours at distances 1, 2, 3 have labels 0, 0, 1
        tensor(1., dtype=torch.float64)
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown categorization methods {unknown}; choose from {', '.join(METHODS)}.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown categorization protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}.")
    if mapping not in MAPPINGS:
        raise ValueError(f"Unknown cluster mapping {mapping!r}; choose from {', '.join(MAPPINGS)}.")
    x_train, x_test = _bits(train_codes, packed), _bits(test_codes, packed)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"Training codes have {x_train.shape[1]} units but test codes {x_test.shape[1]}: extract both "
            "with one layout (neural_codes(..., drop_constant=train_codes.kept) for the test codes)."
        )
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"Need training and test codes, got {len(x_train)} and {len(x_test)}.")
    y_train = labels_array(train_labels, len(x_train))
    y_test = labels_array(test_labels, len(x_test))
    classes, y_train_idx = np.unique(y_train, return_inverse=True)
    y_train_idx = y_train_idx.reshape(-1)

    sets = {"": (x_test, y_test), **({"train_": (x_train, y_train)} if score_train else {})}

    def score(method: str, predict) -> None:
        for prefix, (x, y) in sets.items():
            if protocol == "reference" and method == "kmeans":  # clusters of x, mapped by x's own labels
                pred = predict(x, _class_index(classes, y))
            else:
                pred = predict(x)
            hit = (pred < len(classes)) & (classes[np.minimum(pred, len(classes) - 1)] == y)
            results[prefix + method] = torch.tensor(float(np.mean(hit)), dtype=torch.float64)

    results: dict[str, torch.Tensor] = {}
    with _limited_threads(threads):
        fit = _reference_fit_and_score if protocol == "reference" else _fit_and_score
        fit(methods, x_train, y_train_idx, len(classes), score, n_clusters, n_init, max_iter, mapping, k, seed)
    return {m: results[m] for m in sorted(results, key=lambda key: (key.startswith("train_"), key))}


def _class_index(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of each label in ``classes`` (sorted); ``len(classes)`` for a label not there."""
    idx = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
    return np.where(classes[idx] == y, idx, len(classes))


def _limited_threads(threads: int | None):
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def _fit_and_score(methods, x_train, y_train_idx, n_classes, score, n_clusters, n_init, max_iter, mapping, k, seed):
    if "kmeans" in methods:
        from sklearn.cluster import KMeans

        n = min(n_clusters, len(x_train))
        km = KMeans(n_clusters=n, n_init=n_init, max_iter=max_iter, random_state=seed)
        km.fit(x_train.astype(np.float32))
        label_of = cluster_label_map(km.labels_, y_train_idx, n, n_classes, mapping)
        score("kmeans", lambda x: label_of[km.predict(x.astype(np.float32))])
    if "knn" in methods:
        score("knn", lambda x: knn_predict(x_train, y_train_idx, x, k))
    if "logreg" in methods:
        if n_classes < 2:  # one class: nothing to fit, every prediction is that class
            score("logreg", lambda x: np.zeros(len(x), dtype=np.int64))
        else:
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(max_iter=max_iter, random_state=seed)
            clf.fit(x_train.astype(np.float32), y_train_idx)
            score("logreg", lambda x: clf.predict(x.astype(np.float32)))


def _reference_fit_and_score(methods, x_train, y_train_idx, n_classes, score, n_clusters, n_init, max_iter, mapping,
                             k, seed):
    """The reference protocol (module docstring); ``n_clusters``/``mapping``/``n_init`` are the
    reference's own: one cluster per class, Hungarian mapping, scikit-learn's default restarts."""
    if "kmeans" in methods:
        from sklearn.cluster import KMeans
        from scipy.optimize import linear_sum_assignment

        def clusters_to_labels(x, y_idx):
            c = min(n_classes, len(x))
            found = KMeans(n_clusters=c, random_state=seed).fit_predict(x.astype(np.float32))
            table = np.zeros((c, n_classes + 1), dtype=np.int64)  # last column: labels unseen in training
            np.add.at(table, (found, y_idx), 1)
            rows, cols = linear_sum_assignment(-table[:, :n_classes])
            label_of = np.full(c, n_classes)  # a cluster left unmatched is never right
            label_of[rows] = cols
            return label_of[found]

        score("kmeans", clusters_to_labels)
    if "knn" in methods:
        from sklearn.neighbors import KNeighborsClassifier

        knn = KNeighborsClassifier(n_neighbors=min(k, len(x_train)), metric="hamming").fit(x_train, y_train_idx)
        score("knn", lambda x: knn.predict(x))
    if "logreg" in methods:
        if n_classes < 2:
            score("logreg", lambda x: np.zeros(len(x), dtype=np.int64))
        else:
            from sklearn.linear_model import LogisticRegression
            from sklearn.multiclass import OneVsOneClassifier

            clf = OneVsOneClassifier(LogisticRegression(solver="liblinear", random_state=seed))
            clf.fit(x_train.astype(np.float32), y_train_idx)
            score("logreg", lambda x: clf.predict(x.astype(np.float32)))
