"""Confidence: how well it is calibrated (measures), the temperature and kNN fits (fit), the
ONNX graph edits that carry the score (graph), and fitting a model file (calibrate)."""
