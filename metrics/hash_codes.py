"""Neural hash-code metrics (DESIGN §4) as torchmetrics: ``RedundancyRatio``, ``HashCodePurity``
and ``CodeCategorization``.

Codes accumulate bit-packed (uint8, 1 bit per unit) in list states with
``dist_reduce_fx="cat"``, so under DDP ``compute()`` sees the codes of every process. Like any
torchmetrics list state they grow with the data: ``N * ceil(units / 8)`` bytes.

Codes may be 0/1 or bool ``[N, units]``; construct with ``packed=True`` to feed bit-packed
uint8 rows, or pass a :class:`~actsparse.metrics.functional.hash_codes.NeuralCodes`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from actsparse.metrics.functional.code_categorization import MAPPINGS, METHODS, PROTOCOLS, code_categorization
from actsparse.metrics.functional.hash_codes import (
    NeuralCodes,
    labels_array,
    hash_code_purity,
    packed_codes,
    redundancy_ratio,
)


def _stored(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
    """A list state (or its synced, concatenated form) as one tensor; None when empty."""
    if isinstance(state, list):
        return dim_zero_cat(state) if state else None
    return state


class _CodeMetric(Metric):
    """Shared code handling: validation, packing, one code width per metric."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, packed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.packed = packed

    def _pack(self, codes: Any, like: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(packed_codes(codes, self.packed))
        previous = like[0] if isinstance(like, list) and like else (like if isinstance(like, torch.Tensor) else None)
        if previous is not None and previous.shape[1] != rows.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: these codes take {rows.shape[1]} bytes per sample, earlier ones "
                f"{previous.shape[1]}: every update must use the same units (same model, sites and kept mask)."
            )
        return rows.to(self.device)

    def _labels(self, labels: Any, n: int) -> torch.Tensor:
        y = torch.as_tensor(labels_array(labels, n)).long()
        return y.to(self.device)

    def _require(self, state: str, what: str) -> torch.Tensor:
        value = _stored(getattr(self, state))
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}.compute() was called before update(): no {what} yet. "
                "Call update(...) with a batch of codes first (or skip compute until data arrived)."
            )
        return value


class RedundancyRatio(_CodeMetric):
    """``(N - #distinct codes) / N`` over all codes seen (see
    :func:`~actsparse.metrics.functional.hash_codes.redundancy_ratio`).

    Example:
        >>> metric = RedundancyRatio()
        >>> metric.update(torch.tensor([[1, 0], [1, 0]]))
        >>> metric.update(torch.tensor([[0, 1], [1, 0]]))
        >>> metric.compute()  # 4 codes, 2 distinct
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = False

    def __init__(self, packed: bool = False, **kwargs: Any) -> None:
        super().__init__(packed=packed, **kwargs)
        self.add_state("codes", default=[], dist_reduce_fx="cat")

    def update(self, codes: Any) -> None:
        self.codes.append(self._pack(codes, self.codes))

    def compute(self) -> torch.Tensor:
        return redundancy_ratio(self._require("codes", "codes"), packed=True)


class HashCodePurity(_CodeMetric):
    """``Σ_buckets max_class count / N`` where each distinct code is a bucket (see
    :func:`~actsparse.metrics.functional.hash_codes.hash_code_purity`).

    Example:
        >>> metric = HashCodePurity()
        >>> metric.update(torch.tensor([[1, 1], [1, 1]]), torch.tensor([3, 3]))
        >>> metric.update(torch.tensor([[1, 1], [0, 1]]), torch.tensor([5, 5]))
        >>> metric.compute()  # bucket 11 holds 3, 3, 5 -> 2 correct; bucket 01 -> 1
        tensor(0.7500, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, packed: bool = False, **kwargs: Any) -> None:
        super().__init__(packed=packed, **kwargs)
        self.add_state("codes", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, codes: Any, labels: Any = None) -> None:
        if labels is None:
            labels = codes.labels if isinstance(codes, NeuralCodes) else None
        if labels is None:
            raise ValueError("HashCodePurity.update(codes, labels) needs one label per code.")
        rows = self._pack(codes, self.codes)
        y = self._labels(labels, rows.shape[0])
        self.codes.append(rows)
        self.labels.append(y)

    def compute(self) -> torch.Tensor:
        return hash_code_purity(self._require("codes", "codes"), self._require("labels", "labels"), packed=True)


class CodeCategorization(_CodeMetric):
    """Accuracy of k-means (clusters mapped to labels), k-NN (Hamming) and logistic regression
    fit on training codes and scored on test codes (see
    :func:`~actsparse.metrics.functional.code_categorization.code_categorization`).

    ``update(codes, labels, split="train")`` adds fitting data, ``split="test"`` evaluation data;
    ``protocol`` is ``"fit_predict"`` (default: held-out test codes) or the authors' ``"reference"``
    (see :mod:`~actsparse.metrics.functional.code_categorization`).
    ``compute()`` returns ``{"kmeans": acc, "knn": acc, "logreg": acc}`` (the chosen ``methods``),
    plus ``train_<method>`` accuracies on the training codes themselves when
    ``train_accuracy=True``.

    Example:
        >>> metric = CodeCategorization(methods=("knn",), k=1)
        >>> metric.update(torch.tensor([[1, 1, 0], [0, 0, 1]]), torch.tensor([4, 7]), split="train")
        >>> metric.update(torch.tensor([[1, 0, 0], [0, 1, 1]]), torch.tensor([4, 4]), split="test")
        >>> metric.compute()["knn"]  # nearest: [1,1,0] (label 4); [0,0,1] (7) -> 1 of 2 right
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = True
    SPLITS = ("train", "test")

    def __init__(
        self,
        methods: Sequence[str] = METHODS,
        n_clusters: int = 10,
        mapping: str = "majority",
        k: int = 9,
        seed: int = 0,
        train_accuracy: bool = False,
        packed: bool = False,
        protocol: str = "fit_predict",
        **kwargs: Any,
    ) -> None:
        super().__init__(packed=packed, **kwargs)
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown categorization protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}.")
        self.protocol = protocol
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {', '.join(METHODS)}, got {list(methods)}.")
        if mapping not in MAPPINGS:
            raise ValueError(f"Unknown cluster mapping {mapping!r}; choose from {', '.join(MAPPINGS)}.")
        if k < 1 or n_clusters < 1:
            raise ValueError(f"k and n_clusters must be >= 1, got k={k}, n_clusters={n_clusters}.")
        self.methods, self.n_clusters, self.mapping = tuple(methods), n_clusters, mapping
        self.k, self.seed, self.train_accuracy = k, seed, train_accuracy
        for split in self.SPLITS:
            self.add_state(f"{split}_codes", default=[], dist_reduce_fx="cat")
            self.add_state(f"{split}_labels", default=[], dist_reduce_fx="cat")

    def update(self, codes: Any, labels: Any = None, split: str = "test") -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be 'train' (codes to fit on) or 'test' (codes to score), got {split!r}.")
        if labels is None:
            labels = codes.labels if isinstance(codes, NeuralCodes) else None
        if labels is None:
            raise ValueError("CodeCategorization.update(codes, labels, split) needs one label per code.")
        # one code width for both splits: test codes are scored by models fit on training codes
        other = getattr(self, "train_codes") if split == "test" else getattr(self, "test_codes")
        same = getattr(self, f"{split}_codes")
        rows = self._pack(codes, same if _stored(same) is not None else other)
        getattr(self, f"{split}_labels").append(self._labels(labels, rows.shape[0]))
        same.append(rows)

    def compute(self) -> dict[str, torch.Tensor]:
        train_codes = self._require("train_codes", "training codes (update(..., split='train'))")
        train_labels = self._require("train_labels", "training labels")
        test_codes = self._require("test_codes", "test codes (update(..., split='test'))")
        test_labels = self._require("test_labels", "test labels")
        return code_categorization(
            train_codes, train_labels, test_codes, test_labels, packed=True, methods=self.methods,
            n_clusters=self.n_clusters, mapping=self.mapping, k=self.k, seed=self.seed,
            score_train=self.train_accuracy, protocol=self.protocol,
        )
