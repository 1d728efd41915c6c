"""Convolution: geometry.py (sizes, layout), one module per algorithm (im2col.py, shifted.py,
winograd.py over winograd_transforms.py), policy.py (algorithm choice, chunk planner, forward cache
budget), profile.py (benchmark timers) and layer.py (the registered "Convolution" layer)."""
from .layer import ConvolutionLayer  # noqa: F401  (registers the layer type)
