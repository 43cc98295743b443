"""Pure functions behind the ``actsparse.metrics`` classes."""

__all__: list[str] = []
