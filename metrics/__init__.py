"""torchmetrics ``Metric`` classes for activation sparsity; their pure functions live in
``actsparse.metrics.functional``. Kept importable without Hydra or wandb."""

__all__: list[str] = []
