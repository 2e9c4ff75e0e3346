"""Checkpoints to ONNX graphs and a Triton model repository."""
