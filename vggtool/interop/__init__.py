"""Models in and out of other frameworks: `onnx` (a deploy net and its weights to an ONNX graph, `vggtool
export`) and `torchvision` (VGG weights between .caffemodel and torchvision's state dict, `vggtool convert`).
The modules import the `onnx` and `torch` libraries themselves (absolute imports), only when called."""
