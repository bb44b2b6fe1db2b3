"""clip-cir: composed image retrieval with CLIP (task-oriented fine-tuning + Combiner).

The Python API (`clip_cir.load`, then `encode_images`, `compose`, `index`, `search`; training with
`clip_cir.finetune`, `train_combiner`, `pretrain`, `train_attributes` and `train_zero_shot`) lives in `clip_cir.api`
and is imported on first use, so `import clip_cir` and `clip-cir --help` load no torch.
docs/api.md documents it.
"""

__version__ = "0.1.0"

_LAZY = {name: "clip_cir.api" for name in ("load", "CIRModel", "Gallery", "TrainedRun", "finetune",
                                           "train_combiner", "pretrain", "train_attributes", "train_zero_shot")}
"""Public name -> the module that defines it, imported when the name is first used (PEP 562)."""

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clip_cir' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
