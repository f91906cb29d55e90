"""Inference: the core that opens a model and classifies in batches, and the commands on top of
it (predict, boxes, evaluate, pseudolabel)."""
