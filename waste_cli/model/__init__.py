"""Models: the timm factory, weight layouts, scoring wrappers, the checkpoint format, the schema
a model file is checked against, the built-in model, and the runners that load and run a file."""
