"""ctxlab: a fast, hackable PyTorch lab for open LLMs and long contexts."""

__version__ = "0.1.0"
