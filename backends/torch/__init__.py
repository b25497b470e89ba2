"""PyTorch engines. Importing this package does not import torch: the CLI checks model names from here at no cost."""
