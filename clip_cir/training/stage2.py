"""Stage 2: train the Combiner, or another compositor, on frozen CLIP features
(`stage2/train_combiner.py`, `clip-cir train-combiner`).

CLIP is frozen, so every feature the compositor ever sees — reference and target images, all
caption forms, the validation gallery and captions, and their token features for a compositor
that reads them — is computed once, up front, through the feature caches (a second run on the
same CLIP encodes nothing). An epoch is compositor work only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.config import Stage2Config
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.split_features import (
    EncodeOptions,
    SplitFeatures,
    TokenRequest,
    TokenRows,
    encode_captions,
    encode_image_files,
    split_features,
)
from clip_cir.errors import CIRError
from clip_cir.evaluation.evaluate import metrics_from_features
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.compositors.loading import (
    build_compositor,
    check_compositor_fits,
    compositor_metadata,
    parse_compositor_options,
    reads_caption_tokens,
    uses_tokens,
)
from clip_cir.models.towers import set_memory_format
from clip_cir.training.datasets import FeatureBatches, TrainingSet, training_and_validation
from clip_cir.training.loop import Float32Forward, Selection, Stage, TrainedRun
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import TrainingSetup
from clip_cir.training.setup import run_training

log = logging.getLogger("clip_cir")


@dataclass
class TrainingFeatures:
    """Every frozen CLIP feature stage 2 trains on: the training images' and every caption form's
    global features (on the device), each query's offset into the caption forms, and for a
    compositor that reads tokens, the same rows' token features (memory-mapped, gathered per batch)."""

    images: torch.Tensor
    texts: torch.Tensor
    offsets: torch.Tensor
    image_tokens: TokenRows | None = None
    text_tokens: TokenRows | None = None


def feature_forward(compositor: nn.Module, features: TrainingFeatures,
                    batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's forward on a batch of indices into precomputed CLIP features: (the compositor's
    query from the reference image and the drawn caption form, the normalised target); the loss
    takes the pair. A function of its own so that benchmarks time exactly this step."""
    text_rows = features.offsets[batch["query"]] + batch["form"]
    if getattr(compositor, "uses_tokens", False) or features.image_tokens is not None:
        if features.image_tokens is None or features.text_tokens is None:
            raise CIRError("this compositor reads token features, but the training features hold none")
        reference = features.image_tokens[batch["reference"]].to(features.images.device, torch.float32)
        text = features.text_tokens[text_rows].to(features.images.device, torch.float32)
    else:
        reference, text = features.images[batch["reference"]], features.texts[text_rows]
    return compositor(reference, text), F.normalize(features.images[batch["target"]], dim=-1)


class CompositorTraining(Stage):
    """Stage 2: a compositor (the method's Combiner, or TIRG, MAAF, CoSMo, LBF) learns to fuse
    frozen CLIP features of the reference image and the caption into a query that finds its target
    among the batch's (`batch_contrastive_loss`, or the soft triplet + classification loss). Every
    CLIP feature is precomputed; validation ranks the precomputed validation features, and the best
    checkpoint is kept by three selection scores."""

    def __init__(self, compositor: nn.Module, prepared: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: FeatureBatches, features: TrainingFeatures, val_features: Sequence[SplitFeatures],
                 clip: LoadedCLIP, token_grid: int | None = None,
                 loss: tuple[nn.Module, nn.Module] | None = None):
        super().__init__(prepared, optimizer, batches, Selection(keys=("score", "harmonic_mean", "geometric_mean")))
        self.combiner, self.clip, self.features = compositor, clip, features
        self.val_features, self.token_grid = val_features, token_grid
        self.loss_module, self.loss_weights = loss if loss is not None else (None, None)
        """The soft triplet + classification loss, prepared (it learns its scale) and unwrapped, or
        None: the method's loss."""

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_forward(self.model, self.features, batch)

    def loss(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return batch_contrastive_loss(*features) if self.loss_module is None else self.loss_module(*features)

    def train_mode(self) -> None:
        self.combiner.train()

    def validate(self, epoch: int) -> dict[str, float]:
        self.combiner.eval()
        metrics = metrics_from_features(self.val_features, Float32Forward(self.combiner))
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        meta = {"stage": "stage2", **compositor_metadata(self.combiner, self.token_grid),
                "clip_model_name": self.clip.model_name, "clip_architecture": self.clip.architecture,
                "clip_source": self.clip.source, "epoch": epoch,
                "metrics": {k: round(v, 6) for k, v in metrics.items()}}
        saved = {"combiner": (self.combiner, meta)}
        if self.loss_module is not None:  # its learned scale, for resuming (evaluation does not read it)
            saved["loss"] = (self.loss_weights, {"stage": "stage2", "loss": "soft-triplet-classification"})
        return saved

    @staticmethod
    def load(config: Stage2Config, images: ImageCheck) -> tuple[TrainingSet, list[CIRSplit]]:
        """(the training triplets, the validation splits)."""
        return training_and_validation(config.data, config.training.batch_size, images)

    @classmethod
    def from_setup(cls, setup: TrainingSetup[tuple[TrainingSet, list[CIRSplit]]]) -> "CompositorTraining":
        config: Stage2Config = setup.config
        (data, val_splits), clip, accelerator, device = setup.data, setup.clip, setup.accelerator, setup.device
        # The compositor is built first, so its init never depends on cache hits.
        compositor = build_stage2_compositor(config, clip.embed_dim)
        check_compositor_fits(compositor, clip)  # a tower without token features stops before any encoding
        loss = stage2_loss(config.loss)
        clip.model.to(device).eval().requires_grad_(False)
        set_memory_format(clip.model, device, config.device.channels_last)
        encode = EncodeOptions.for_accelerator(accelerator, setup.transform, setup.feature_cache(),
                                               progress=setup.progress, num_workers=setup.workers,
                                               pixel_cache=setup.pixel_cache(repeated=False))

        # Every CLIP feature, once.
        image_features = encode_image_files(clip, data.image_paths, encode, "training image features").to(device)
        texts, offsets = data.caption_table()
        text_features = encode_captions(clip, texts, encode, "training caption features").to(device)
        features = TrainingFeatures(image_features, text_features, offsets.to(device))
        batches = FeatureBatches(data, config.training.batch_size, config.training.seed, device,
                                 accelerator.process_index, accelerator.num_processes)
        tokens = TokenRequest(config.token_grid, reads_caption_tokens(compositor)) if uses_tokens(compositor) else None
        if tokens is not None:
            from clip_cir.encoding.token_store import encode_image_tokens, encode_text_tokens

            # Tokens of the images some query takes as its reference (targets are ranked by their
            # global features): table row of each training image, -1 for a target-only image.
            references = batches.reference.unique().cpu()
            image_table = encode_image_tokens(clip, [data.image_paths[i] for i in references.tolist()], encode,
                                              "training reference tokens", grid=tokens.grid)
            token_rows = torch.full((len(image_features),), -1, dtype=torch.long)
            token_rows[references] = torch.arange(len(references))
            text_table = encode_text_tokens(clip, texts, encode, "training caption tokens") if tokens.captions else None
            features.image_tokens = TokenRows(image_features, image_table, token_rows)
            features.text_tokens = TokenRows(text_features, text_table, torch.arange(len(text_features)))
        val_features = [split_features(clip, split, encode.full_precision(), tokens) for split in val_splits]
        clip.model.cpu()  # frozen and fully encoded: free the accelerator memory for the compositor

        compositor = compositor.to(device)
        loss = loss.to(device) if loss is not None else None  # on its device before the optimizer picks fused Adam
        parameters = list(compositor.parameters()) + (list(loss.parameters()) if loss is not None else [])
        optimizer = make_optimizer(torch.optim.Adam, parameters, lr=config.training.lr,
                                   weight_decay=config.training.weight_decay)
        if loss is not None:
            prepared, prepared_loss, optimizer = accelerator.prepare(compositor, loss, optimizer)
        else:
            prepared, optimizer = accelerator.prepare(compositor, optimizer)
        return cls(compositor, prepared, optimizer, batches, features, val_features, clip, config.token_grid,
                   (prepared_loss, loss) if loss is not None else None)


def stage2_loss(name: str) -> nn.Module | None:
    """The loss module of `--loss NAME`, or None for the method's batch contrastive loss (a function)."""
    if name == "contrastive":
        return None
    from clip_cir.training.losses import SoftTripletClassificationLoss

    return SoftTripletClassificationLoss()


def build_stage2_compositor(config: Stage2Config, clip_feature_dim: int) -> nn.Module:
    """The compositor the settings name, sized for `clip_feature_dim`-d CLIP features; the Combiner's
    sizes come from `projection_dim`/`hidden_dim` (default 4x and 8x the CLIP size)."""
    options = parse_compositor_options(config.compositor, config.compositor_options)
    if config.compositor == "combiner":
        options = {"projection_dim": config.projection_dim, "hidden_dim": config.hidden_dim, **options}
    elif config.projection_dim is not None or config.hidden_dim is not None:
        raise CIRError(f"--projection-dim and --hidden-dim size the Combiner; the {config.compositor} compositor "
                       f"takes its sizes from --compositor-options")
    return build_compositor(config.compositor, clip_feature_dim, options)


def run(config: Stage2Config) -> TrainedRun:
    """Train stage 2 from its settings (what `clip-cir train-combiner` and `clip_cir.train_combiner` run)."""
    return run_training(CompositorTraining, config)
