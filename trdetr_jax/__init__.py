"""TR-DETR in JAX/Flax: joint moment retrieval and highlight detection."""

__version__ = "0.1.0"
