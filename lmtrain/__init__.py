"""lmtrain: train, evaluate and sample recurrent language models from a YAML file."""

__version__ = "0.1.0"
