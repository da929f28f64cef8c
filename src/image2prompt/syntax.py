"""Prompt syntax that every layer shares (a leaf module: it imports nothing).

The chain builds ``prefix + SEPARATOR + phrase``, the encoders' prefix cache splits
at it, and the prompt assembly joins phrases with it, so it is defined once, here.
"""

SEPARATOR = ", "
