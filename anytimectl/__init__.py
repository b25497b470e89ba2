"""anytimectl: straggler-aware distributed training experiments under one MPI launcher."""

__version__ = "0.1.0"
