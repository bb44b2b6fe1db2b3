"""Names and defaults the command lines need before torch is imported (fast `--help`)."""

DEFAULT_MODEL = "RN50x4"
DEFAULT_PRETRAINED = "openai"
TINY_MODEL = "cir-tiny-vit"
TRANSFORMS = ("targetpad", "squarepad", "clip")
SEARCH_BACKENDS = ("exact", "faiss")
FAISS_INDEXES = ("flat", "ivf", "hnsw")


LR_SCHEDULERS = ("const", "cosine")


TRACKERS = ("none", "comet_ml")
