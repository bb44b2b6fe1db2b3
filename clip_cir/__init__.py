"""clip-cir: composed image retrieval with CLIP (task-oriented fine-tuning + Combiner)."""

__version__ = "0.1.0"
