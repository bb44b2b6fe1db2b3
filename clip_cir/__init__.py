"""clip-cir: composed image retrieval with CLIP (task-oriented fine-tuning + Combiner)."""

__version__ = "0.1.0"

_API = ("finetune", "train_combiner", "pretrain")


def __getattr__(name: str):
    """The Python API (`clip_cir.api`), imported on first use so that `import clip_cir` stays light."""
    if name in _API:
        from clip_cir import api

        return getattr(api, name)
    raise AttributeError(f"module 'clip_cir' has no attribute {name!r}")
