"""TR-DETR in JAX/Flax: joint moment retrieval and highlight detection."""

__version__ = "0.1.0"

__all__ = ["Predictor"]


def __getattr__(name):
    # Imported on first use: ``import trdetr_jax`` stays light (no JAX start-up).
    if name == "Predictor":
        from trdetr_jax.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'trdetr_jax' has no attribute {name!r}")
