"""Names and defaults the command lines need before torch is imported (fast `--help`)."""

DEFAULT_MODEL = "RN50x4"
DEFAULT_PRETRAINED = "openai"
TINY_MODEL = "cir-tiny-vit"
TRANSFORMS = ("targetpad", "squarepad", "clip")
SEARCH_BACKENDS = ("exact", "faiss")
FAISS_INDEXES = ("flat", "ivf", "hnsw")


LR_SCHEDULERS = ("const", "cosine")


TRACKERS = ("none", "comet_ml")


ADDE_TOP_K = 30  # k of attribute manipulation's top-k accuracy and NDCG@k: ADDE eval.py's `--top_k` default


ENCODERS = ("text", "image", "both")  # stage 1's --encoder: which towers train
ZERO_SHOT_METHODS = ("pic2word", "searle", "lincir")  # `clip-cir zero-shot --method` (clip_cir.models.zero_shot)
COMBINING = ("sum", "image", "slerp", *ZERO_SHOT_METHODS)
"""--combining: the functions of `clip_cir.models.combiner.COMBINING_FUNCTIONS`, and the pseudo-word
methods, which need a trained φ (`--zero-shot RUN`)."""
DEMO_MAX_K = 100  # the demo's largest --top-k and API k
VALIDATION_SCHEDULES = ("published", "every-nth-and-last")  # --validation-schedule (clip_cir.config.TrainingConfig)
COMPOSITORS = ("combiner", "tirg", "maaf", "cosmo", "lbf")  # stage 2's --compositor (clip_cir.models.compositors)
STAGE2_LOSSES = ("contrastive", "soft-triplet-classification")  # stage 2's --loss
CSS_SPLITS = ("train", "test")  # clip_cir.data.css, which needs numpy: named here for the registry
CSS_FOLDER = "CSSDataset"  # and its folder, for the synthetic stand-ins' list
CSS_QUERY_IMAGES = ("3d", "2d")  # --css-query-images: CSS's query images (clip_cir.data.css)
ZERO_SHOT_METHODS = ("pic2word", "searle", "lincir")  # `clip-cir zero-shot --method` (clip_cir.models.zero_shot)
