"""credo: deep learning that knows what it does not know, and shows what it computes."""

__version__ = "0.1.0"
