"""Dataset-scale batch runs: inputs, engine and outputs of ``image2prompt batch``."""
