"""`clip-cir zero-shot`: a mapping network φ (Pic2Word, SEARLE or LinCIR, `models.zero_shot`)
learns to turn a frozen CLIP's features into pseudo-words, through the shared training loop.

The CLIP stays frozen on the device: every step runs its text tower on prompts holding φ's
pseudo-words, and φ's gradients pass through it (so `--accum-steps` and `--compile` apply, as
for the programs that train towers). What does not depend on φ is computed once: the training
images' features go through the feature cache, SEARLE's inversion tokens are kept in the run
directory (`training.zero_shot_inversion`). Each method's batch is its loss of
`training.zero_shot` split in two, as gradient accumulation needs (`accumulation`): `forward`
gives per-example features, `loss` takes the whole batch's. SEARLE's concept and phrase draws
come with the batch (`zero_shot_data.IndexBatches`); LinCIR's noise is drawn from torch's random
stream, like dropout (accumulation replays it). Under data parallelism SEARLE's distillation
compares every process's tokens, like Pic2Word's contrastive loss.

Validation (with `--dataset`) ranks the benchmark's validation split with `ZeroShotComposer` and
keeps `best*/` as stage 2 does; the untrained φ is scored first, as epoch 0. Without a benchmark
there is no validation and `last/` holds φ. The saved module is `phi.safetensors` with
`models.zero_shot.mapping_metadata`, which `models.zero_shot.load_mapping(RUN_DIR)` reads.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Mapping

import torch
from torch import nn

from clip_cir.config import ZeroShotConfig
from clip_cir.data.images import ImageCheck
from clip_cir.encoding import extraction
from clip_cir.encoding.options import EncodeOptions
from clip_cir.encoding.split_features import encode_image_files, split_features
from clip_cir.evaluation.evaluate import metrics_from_features
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.pseudo_words import encode_with_pseudo_words, require_pseudo_words
from clip_cir.models.towers import COMPILED_LENGTH_MULTIPLE, set_memory_format
from clip_cir.models.zero_shot import (
    PROMPT_TEMPLATES,
    PseudoWordMapping,
    ZeroShotComposer,
    check_template,
    clip_identity,
    mapping_for,
    mapping_metadata,
)
from clip_cir.training.loop import Selection, Stage, TrainedRun
from clip_cir.training.losses import gather_with_grad
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import Run, TrainingSetup
from clip_cir.training.setup import run_training
from clip_cir.training.textual_inversion import REGULARISER_TEMPLATES, regulariser_phrases
from clip_cir.training.zero_shot import PIC2WORD_TRAINING_PROMPT, PseudoWordText, lincir_token_pairs
from clip_cir.training.zero_shot_data import IndexBatches, MappingData, load_mapping_data
from clip_cir.training.zero_shot_inversion import OTI_FOLDER, image_concepts, inversion_key, invert_images
from clip_cir.training.zero_shot_losses import lincir_loss, lincir_noise, pic2word_loss, searle_phi_loss

log = logging.getLogger("clip_cir")


class PseudoWordPrompts(nn.Module):
    """φ and the frozen text tower behind one forward, the module DDP wraps: (φ's inputs [B, D],
    token ids [B, L]) -> (the prompts' features with φ's pseudo-words [B, D], the pseudo-words
    [B, W]). The CLIP is not a submodule: DDP sees φ's parameters only. With `compile`, the
    text tower's pseudo-word encoding goes through `torch.compile` (static shapes)."""

    def __init__(self, mapping: PseudoWordMapping, clip_model: nn.Module, placeholder_id: int, compile: bool = False):
        super().__init__()
        self.mapping = mapping
        self.placeholder_id = placeholder_id
        encode = partial(encode_with_pseudo_words, clip_model)
        self._encode = torch.compile(encode, dynamic=False) if compile else encode

    def forward(self, inputs: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pseudo = self.mapping(inputs)
        extraction.encode_counts["text"] += token_ids.shape[0]
        return self._encode(token_ids, pseudo, self.placeholder_id), pseudo


class MappingTraining(Stage):
    """A zero-shot mapping network φ on a frozen CLIP, by its method's loss (`training.zero_shot`)."""

    def __init__(self, mapping: PseudoWordMapping, prepared: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: IndexBatches, *, clip, text: PseudoWordText, method: str, template: str,
                 identity: dict, accum_steps: int = 1, image_features: torch.Tensor | None = None,
                 captions: list[str] | None = None, oti_tokens: torch.Tensor | None = None,
                 concepts: list[list[str]] | None = None, val_features: list | None = None):
        selection = Selection(keys=("score", "harmonic_mean", "geometric_mean"))
        super().__init__(prepared, optimizer, batches, selection, accum_steps=accum_steps)
        self.mapping, self.clip, self.text, self.method = mapping, clip, text, method
        self.template, self.identity = template, identity
        self.image_features, self.captions = image_features, captions or []
        self.oti_tokens, self.concepts = oti_tokens, concepts or []
        self.val_features = val_features or []
        self.validates = bool(self.val_features)
        self._pic2word_ids: torch.Tensor | None = None

    # ---- one step -----------------------------------------------------------------------------

    def forward(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return {"pic2word": self._pic2word, "searle": self._searle, "lincir": self._lincir}[self.method](batch)

    def loss(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.method == "pic2word":
            images, prompts = features
            return pic2word_loss(images, prompts, self.clip.model.logit_scale.exp().detach())
        if self.method == "searle":
            oti, predicted, phrases, pseudo_phrases = features
            return searle_phi_loss(gather_with_grad(oti), gather_with_grad(predicted), phrases, pseudo_phrases)
        return lincir_loss(*features)

    def _images(self, batch: dict) -> torch.Tensor:
        return self.image_features[batch["index"].to(self.image_features.device)]

    def _pic2word(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the images' features, the features of "a photo of $" with $ = φ(image))."""
        images = self._images(batch)
        if self._pic2word_ids is None:  # one prompt for every image
            self._pic2word_ids = self.text.ids([PIC2WORD_TRAINING_PROMPT.format(self.text.placeholder)])
        prompts, _ = self.model(images, self._pic2word_ids.expand(len(images), -1))
        return images, prompts

    def _searle(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """(OTI tokens, φ's tokens, features of phrases about a concept of each image, of the same
        phrases with φ's token in the concept's place)."""
        rows = batch["index"].tolist()
        words = [self.concepts[i][c] for i, c in zip(rows, batch["concept"].tolist())]
        phrases, pseudo_phrases = regulariser_phrases(words, batch["phrase"].tolist(), self.text.placeholder)
        pseudo_features, predicted = self.model(self._images(batch), self.text.ids(pseudo_phrases))
        phrase_ids = self.text.ids(phrases)
        extraction.encode_counts["text"] += len(phrases)
        return (self.oti_tokens[batch["index"].to(self.oti_tokens.device)], predicted,
                self.text.encode_plain(phrase_ids), pseudo_features)

    def _lincir(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(features of the captions with φ(noised caption feature) for their keywords, the captions' features)."""
        captions = [self.captions[i] for i in batch["index"].tolist()]
        clean_ids, masked_ids = lincir_token_pairs(self.text, captions)
        extraction.encode_counts["text"] += len(captions)
        caption_features = self.text.encode_plain(clean_ids).float()
        masked_features, _ = self.model(lincir_noise(caption_features), masked_ids)
        return masked_features, caption_features

    # ---- the rest of a stage ----------------------------------------------------------------------

    def train_mode(self) -> None:
        self.clip.model.eval()  # frozen: no dropout, BatchNorm statistics kept
        self.mapping.train()

    def validate(self, epoch: int) -> dict[str, float]:
        self.mapping.eval()
        metrics = metrics_from_features(self.val_features, ZeroShotComposer(self.clip, self.mapping, self.template))
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        meta = {**mapping_metadata(self.mapping, self.identity, self.template), "stage": "zero-shot",
                "epoch": epoch, "metrics": {k: round(v, 6) for k, v in metrics.items()}}
        return {"phi": (self.mapping, meta)}

    def before_training(self, run: Run, resumed: bool) -> None:
        """The untrained φ's validation numbers, as epoch 0 of validation_metrics.csv."""
        if resumed or not run.is_main or not self.validates:
            return
        metrics = self.validate(-1)
        log.info("validation of the untrained %s mapping network: %s", self.method,
                 ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "soft" not in k))
        run.append_csv("validation_metrics.csv", {"epoch": 0, **metrics})

    @staticmethod
    def load(config: ZeroShotConfig, images: ImageCheck) -> MappingData:
        """The training images or captions, and the validation splits (`zero_shot_data`)."""
        check_template(config.prompt_template or PROMPT_TEMPLATES[config.method])
        return load_mapping_data(config, images)

    @classmethod
    def from_setup(cls, setup: TrainingSetup[MappingData]) -> "MappingTraining":
        config: ZeroShotConfig = setup.config
        data, clip, accelerator, device = setup.data, setup.clip, setup.accelerator, setup.device
        method, training = config.method, config.training
        require_pseudo_words(clip.model)  # an unsupported text tower stops before any encoding
        template = check_template(config.prompt_template or PROMPT_TEMPLATES[method])
        # φ is built first, so its init never depends on cache hits.
        mapping = mapping_for(method, clip, **config.phi_options)
        mapping.prompt_template = template
        clip.model.to(device).eval().requires_grad_(False)
        set_memory_format(clip.model, device, config.device.channels_last)
        compile = config.towers.compile
        text = PseudoWordText(clip, length_multiple=COMPILED_LENGTH_MULTIPLE if compile else 1)
        identity = clip_identity(clip)
        encode = EncodeOptions.for_accelerator(accelerator, setup.transform, setup.feature_cache(),
                                               progress=setup.progress, num_workers=setup.workers,
                                               pixel_cache=setup.pixel_cache(repeated=False))
        extra: dict = {}
        if data.image_paths:
            features = encode_image_files(clip, data.image_paths, encode, "training image features")
            extra["image_features"] = features.to(device, torch.float32)
        if method == "searle":
            extra["concepts"], extra["oti_tokens"] = searle_targets(setup, data, extra["image_features"], identity,
                                                                    text.placeholder)
        if method == "lincir":
            extra["captions"] = data.captions
        val_features = [split_features(clip, split, encode.full_precision()) for split in data.val_splits]

        mapping = mapping.to(device)
        optimizer = make_optimizer(torch.optim.AdamW, mapping.parameters(), lr=training.lr,
                                   weight_decay=training.weight_decay)
        prepared, optimizer = accelerator.prepare(PseudoWordPrompts(mapping, clip.model, text.placeholder_id, compile),
                                                  optimizer)
        draws = {"concept": config.inversion.oti_top_k, "phrase": len(REGULARISER_TEMPLATES)} \
            if method == "searle" else None
        if draws is not None:  # each image has as many concepts as the vocabulary allows
            draws["concept"] = min(draws["concept"], len(data.concepts))
        batches = IndexBatches(data.size, training.batch_size, training.seed, accelerator.process_index,
                               accelerator.num_processes, draws)
        return cls(mapping, prepared, optimizer, batches, clip=clip, text=text, method=method, template=template,
                   identity=identity, accum_steps=config.accum_steps, val_features=val_features, **extra)


def searle_targets(setup: TrainingSetup[MappingData], data: MappingData, image_features: torch.Tensor,
                   identity: dict, placeholder: str) -> tuple[list[list[str]], torch.Tensor]:
    """(each training image's concept words, its OTI token on the device): SEARLE's targets,
    inverted once and kept in RUN/oti/."""
    config: ZeroShotConfig = setup.config
    settings = config.inversion
    concepts = image_concepts(setup.clip, image_features, data.concepts, settings.oti_top_k)
    key = inversion_key(settings, config.training.seed, placeholder, identity, data.image_paths, concepts)
    log.info("textual inversion of %d training images (%d steps each, in batches of %d; kept in %s)",
             len(image_features), settings.oti_steps, settings.oti_batch_size, setup.run.path / OTI_FOLDER)
    tokens = invert_images(setup.clip, image_features, concepts, settings, config.training.seed,
                           setup.run.path / OTI_FOLDER, key, setup.accelerator, placeholder, setup.progress)
    return concepts, tokens.to(image_features.device)


def run(config: ZeroShotConfig) -> TrainedRun:
    """Train a zero-shot mapping network from its settings (what `clip-cir zero-shot` and
    `clip_cir.train_zero_shot` run)."""
    return run_training(MappingTraining, config)
