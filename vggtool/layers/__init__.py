"""Layers, one module per family, registered under their prototxt `type` strings."""
from .base import Layer, layer_class, layer_types, register_layer  # noqa: F401

# Importing the family modules registers their layers.
from . import (  # noqa: F401,E402
    input,
    conv,
    pooling,
    neuron,
    inner_product,
    softmax,
    accuracy,
    split,
    lrn,
    eltwise,
    shape,
    loss,
    data,
    box_loss,
)
