"""`clip-cir train-attributes`: FLAM (`clip_cir.models.flam`) trained on frozen CLIP image features
of an attribute catalogue, by the shared loop (run directory, resume, schedules, DDP, mixed
precision, validation and checkpoint selection).

Every image feature is computed once, up front, through the feature cache (as stage 2 does); an
epoch is FLAM work only. The paper's two phases are epochs of one run:

- epochs 1..E (`--embedding-epochs`) train the embedders φ_a and their dictionaries with loss (2);
- at the start of epoch E+1 the dictionary vectors become class centroids (unless
  `--learned-dictionary`), the embedders are frozen, and images without a label of an attribute
  take the nearest dictionary vector's class (`training.flam.manipulation_classes`);
- epochs E+1..`--epochs` train every attribute's G and D on each batch. Where `train_flam`
  alternates a D step and a G step per batch and trains the attributes one after another, here
  one optimizer step takes D's loss (on detached manipulated features) and G's loss (through D
  with its weights detached) together: simultaneous gradient steps, one backward per batch as
  the loop has it. The networks of different attributes share nothing, so training them in the
  same epochs changes only the order of random draws.

One Adam holds three parameter groups: the embedders at `--lr`, G and D at `--gan-lr` with
betas (0.5, 0.999); a schedule scales both alike. Parameters a phase does not use get no gradient
and Adam leaves them as they are (under DDP, the model is wrapped with `find_unused_parameters`).
Validation (on the catalogue's val split, else test) reports top-k accuracy and NDCG@k of FLAM's
queries; the selection score is the top-k accuracy of the manipulation epochs (NaN before them:
no `best/` is kept from an untrained G).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from clip_cir.config import AttributesConfig
from clip_cir.data.attribute_splits import AttributeSplits, read_attribute_splits
from clip_cir.data.images import ImageCheck
from clip_cir.encoding.split_features import EncodeOptions, encode_image_files
from clip_cir.errors import CIRError
from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics
from clip_cir.models.flam import FLAM
from clip_cir.models.flam_files import flam_metadata
from clip_cir.training.flam import (
    GAN_BETAS,
    discriminator_loss,
    flam_query_features,
    generator_losses,
    manipulation_classes,
    pair_negatives,
)
from clip_cir.training.flam_losses import FLAMLossWeights, embedding_loss
from clip_cir.training.loop import Selection, Stage, TrainedRun
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import TrainingSetup
from clip_cir.training.setup import run_training

log = logging.getLogger("clip_cir")


class IndexBatches:
    """Rows of the training features in a permutation drawn from (seed, epoch) alone, in batches of
    the global batch size, each process taking its slice; the last, partial batch is kept by a
    single process and dropped under DDP (as stage 2's batches: no process gets an empty slice).
    `set_epoch` also tells the stage which epoch begins."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device, on_epoch,
                 process_index: int = 0, num_processes: int = 1):
        self.n, self.batch_size, self.seed, self.device, self.on_epoch = n, batch_size, seed, device, on_epoch
        self.rank, self.processes, self.epoch = process_index, num_processes, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.on_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) if self.processes == 1 else self.n // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).to(self.device)
        share = self.batch_size // self.processes
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start:start + self.batch_size]
            yield batch if self.processes == 1 else batch[self.rank * share:(self.rank + 1) * share]


class FLAMObjective(nn.Module):
    """The module the loop steps: FLAM, and a batch's loss in the current phase (loss (2) summed over
    attributes; or, for every attribute, D's loss plus G's weighted losses)."""

    def __init__(self, flam: FLAM, features: torch.Tensor, labels: torch.Tensor, weights: FLAMLossWeights,
                 margin: float, online_sampling: bool):
        super().__init__()
        self.flam = flam
        self.features, self.labels = features, labels
        """Working-space training features [N, D] and labels [N, A] (not saved: not buffers)."""
        self.weights, self.margin, self.online_sampling = weights, margin, online_sampling
        self.embeddings: list[torch.Tensor] | None = None
        """The frozen embedders' φ_a of every training image, once the manipulation phase begins."""
        self.classes: list[torch.Tensor] = []
        self.generator = torch.Generator()

    def begin_manipulation(self, centroid_dictionary: bool) -> None:
        """Dictionary vectors to centroids (the same values again in a resumed run: the embedders
        no longer change), then every image's embeddings and classes."""
        with torch.no_grad():
            if centroid_dictionary:
                self.flam.set_dictionary_to_centroids(self.features, self.labels)
            self.embeddings = self.flam.embed(self.features)
            self.classes = [manipulation_classes(self.flam, self.embeddings, self.labels, a)
                            for a in range(len(self.flam.value_counts))]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.features[rows]
        if self.embeddings is None:
            y = self.labels[rows]
            return sum(embedding_loss(embedder(x), y[:, a], embedder.dictionary_vectors(), self.margin)
                       for a, embedder in enumerate(self.flam.embedders))
        total = x.new_zeros((), requires_grad=True)
        for a, (G, D) in enumerate(zip(self.flam.manipulators, self.flam.discriminators)):
            embeddings = [e[rows] for e in self.embeddings]
            negatives = pair_negatives(embeddings, self.classes[a][rows], a, self.online_sampling, self.generator)
            keep = negatives >= 0
            if not keep.any():
                continue
            wanted = embeddings[a][negatives[keep]]
            embeddings = [e[keep] for e in embeddings]
            real = x[keep]
            fake = G(real, wanted)
            loss_d = discriminator_loss(D, real, fake, embeddings, a, self.weights, self.flam.match_remaining)
            frozen = {name: p.detach() for name, p in D.named_parameters()}
            terms = generator_losses(G, lambda f, D=D, frozen=frozen: functional_call(D, frozen, (f,)), real, fake,
                                     wanted, embeddings, a, self.flam.match_remaining)
            loss_g = (self.weights.adversarial * terms["adversarial"] + self.weights.matching * terms["matching"]
                      + self.weights.cycle * terms["cycle"])
            total = total + loss_d + loss_g
        return total


class FLAMTraining(Stage):
    """FLAM's two phases over precomputed CLIP features of an attribute catalogue (module docstring)."""

    def __init__(self, objective: FLAMObjective, prepared: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: IndexBatches, data: AttributeSplits, gallery_features: torch.Tensor, clip,
                 config: AttributesConfig):
        super().__init__(prepared, optimizer, batches, Selection())
        self.objective, self.flam, self.data = objective, objective.flam, data
        self.gallery_features, self.clip, self.config = gallery_features, clip, config
        batches.on_epoch = self.begin_epoch

    def begin_epoch(self, epoch: int) -> None:
        self.objective.generator.manual_seed(self.config.training.seed * 1_000_003 + epoch + 1)
        if epoch >= self.config.embedding_epochs and self.objective.embeddings is None:
            self.objective.begin_manipulation(not self.config.learned_dictionary)
            log.info("epoch %d: the embedders are trained; the manipulators and discriminators train from here",
                     epoch + 1)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(batch).reshape(1),)

    def loss(self, features: tuple[torch.Tensor]) -> torch.Tensor:
        return features[0].sum()

    def train_mode(self) -> None:
        self.flam.train()

    def validate(self, epoch: int) -> dict[str, float]:
        self.flam.eval()
        queries = self.flam_queries()
        metrics = attribute_manipulation_metrics(queries, self.gallery_features, self.data.gallery,
                                                 self.data.queries, self.config.top_k)
        score = metrics[f"top{self.config.top_k}_accuracy"] if epoch >= self.config.embedding_epochs else math.nan
        return {**metrics, "score": score}

    @torch.no_grad()
    def flam_queries(self) -> torch.Tensor:
        return flam_query_features(self.flam, self.gallery_features, self.data.queries)

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        train = self.data.train
        meta = {**flam_metadata(self.flam, train.attributes, train.values, self.clip), "stage": "attributes",
                "epoch": epoch, "metrics": {k: round(v, 6) for k, v in metrics.items() if math.isfinite(v)}}
        return {"flam": (self.flam, meta)}

    @staticmethod
    def load(config: AttributesConfig, images: ImageCheck) -> AttributeSplits:
        data = config.data
        return read_attribute_splits(data.catalogue, data.catalogue_layout, data.validation_split, data.image_root)

    @classmethod
    def from_setup(cls, setup: TrainingSetup[AttributeSplits]) -> "FLAMTraining":
        config: AttributesConfig = setup.config
        data, clip, accelerator, device = setup.data, setup.clip, setup.accelerator, setup.device
        clip.model.to(device).eval().requires_grad_(False)
        encode = EncodeOptions.for_accelerator(accelerator, setup.transform, setup.feature_cache(),
                                               progress=setup.progress, num_workers=setup.workers)
        train_features = encode_image_files(clip, list(data.train.paths), encode, "catalogue image features")
        gallery_features = encode_image_files(clip, list(data.gallery.paths), encode.full_precision(),
                                              f"{data.split} image features")
        clip.model.cpu()
        flam = build_flam(config, train_features.shape[1], data.train.value_counts).to(device)
        train_features = train_features.to(device).float()
        flam.fit_feature_space(train_features)
        labels = torch.from_numpy(data.train.labels.copy()).to(device)
        weights = FLAMLossWeights(config.adversarial_weight, config.matching_weight, config.cycle_weight)
        objective = FLAMObjective(flam, flam.to_working_space(train_features), labels, weights, config.margin,
                                  not config.random_pairs)
        lr, gan_lr = config.training.lr, config.gan_lr
        gan = list(flam.manipulators.parameters()) + list(flam.discriminators.parameters())
        optimizer = make_optimizer(torch.optim.Adam, [
            {"params": list(flam.embedders.parameters()), "lr": lr, "lr_scale": 1.0},
            {"params": gan, "lr": gan_lr, "lr_scale": gan_lr / lr, "betas": GAN_BETAS}],
            lr=lr, weight_decay=config.training.weight_decay)
        if accelerator.num_processes > 1:
            from accelerate.utils import DistributedDataParallelKwargs

            accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        prepared, optimizer = accelerator.prepare(objective, optimizer)
        batches = IndexBatches(len(train_features), config.training.batch_size, config.training.seed, device,
                               lambda epoch: None, accelerator.process_index, accelerator.num_processes)
        return cls(objective, prepared, optimizer, batches, data, gallery_features.to(device).float(), clip, config)


def build_flam(config: AttributesConfig, feature_dim: int, value_counts) -> FLAM:
    """FLAM sized by the settings, its initial weights drawn from the seed alone (whatever loading the
    CLIP drew before), as `train_flam` draws them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
        return FLAM(feature_dim, value_counts, embedding_dim=config.embedding_dim,
                    embedder_hidden=config.embedder_hidden, manipulator_hidden=config.manipulator_hidden,
                    discriminator_hidden=config.discriminator_hidden, match_remaining=not config.single_matching,
                    residual=config.residual)


def run(config: AttributesConfig) -> TrainedRun:
    """Train FLAM from its settings (what `clip-cir train-attributes` and `clip_cir.train_attributes` run)."""
    if config.data.catalogue is None:
        raise CIRError("the following arguments are required: --catalogue")
    return run_training(FLAMTraining, config)
