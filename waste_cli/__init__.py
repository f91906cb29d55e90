"""wastecls: train, evaluate and ship image classifiers for waste and litter."""

__version__ = "0.1.0"
__all__ = ["__version__"]
