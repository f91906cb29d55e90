"""Datasets: scanning folders, preparing splits, transforms and loaders."""
