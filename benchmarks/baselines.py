"""The ways of working the programs are compared against, on the library's own parts: the
published reference code's stage-1 `--encoder text` epochs, and stage-2 epochs through the
library's loop with each batch source (the program's, the per-item DataLoader it replaced, and
a replayed floor)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
import torch.nn.functional as F
from fixtures import load_model, load_training_set
from harness import quiet
from timing import Epochs, time_epochs
from torch.utils.data import DataLoader

from clip_cir.models.transforms import ImageTransform
from clip_cir.training.datasets import EpochSampler, TrainingSet, TripletDataset
from clip_cir.training.run import seed_everything

if TYPE_CHECKING:
    from accelerate import Accelerator


def image_triplet_loader(data: TrainingSet, transform: ImageTransform, batch_size: int, num_workers: int,
                         seed: int) -> tuple[DataLoader, EpochSampler]:
    """The DataLoader the library itself builds when an image tower trains (stage 1 `--encoder
    both`): preprocessed reference and target images from worker processes, in the same
    (seed, epoch) order. The baselines load images through it every batch, as the published
    code does, so their data pipeline is the library's and only the CLIP work differs."""
    dataset = TripletDataset(data, seed, transform)
    sampler = EpochSampler(len(dataset), seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True)
    return loader, sampler


def published_text_epochs(accelerator: "Accelerator", data_root: Path, model_name: str, seed: int, batch_size: int,
                          num_workers: int, epochs: int) -> Epochs:
    """Stage-1 `--encoder text` epochs as the published code trains it: reference and target
    images re-encoded by the frozen image tower (under no_grad) on every step, and captions
    encoded at the full context length.

    Same model, data, DataLoader (`image_triplet_loader`), loss, optimizer hyper-parameters as
    `clip_cir.training.stage1` (its own parser's defaults), and its precision handling through
    `accelerator` (autocast, the fp16 loss scaler). What differs: where the image features come
    from, the caption length, and the optimizer's kernel: `torch.optim.AdamW` as the published
    code builds it (torch's default implementation), where clip-cir asks for the fused one
    (`clip_cir.training.optim.make_optimizer`). Timed by `time_epochs`, the library loop's rule.
    """
    from clip_cir.config import Stage1Config
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.training.losses import batch_contrastive_loss

    defaults = Stage1Config().training  # the program's defaults
    device = accelerator.device
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the programs' entry points
    clip, transform = load_model(model_name, seed)
    model = clip.model.to(device)
    for name, param in model.named_parameters():  # the text tower trains, as with --encoder text
        param.requires_grad = not name.startswith("visual.") and name != "logit_scale"
    model.train()
    model.visual.eval()
    optimizer = accelerator.prepare(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                      lr=defaults.lr, betas=(0.9, 0.999), eps=1e-7,
                                                      weight_decay=defaults.weight_decay))
    loader, sampler = image_triplet_loader(load_training_set(data_root), transform, batch_size, num_workers, seed)

    def step(batch: dict) -> int:
        with accelerator.autocast():
            with torch.no_grad():  # the frozen image tower, every batch
                reference = model.encode_image(transform.normalize(batch["reference_image"].to(device)))
                target = model.encode_image(transform.normalize(batch["target_image"].to(device)))
            text = model.encode_text(clip.tokenizer(batch["caption"]).to(device))  # full context length
            loss = batch_contrastive_loss(element_wise_sum(reference, text), F.normalize(target, dim=-1))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the published code reads the loss every step (its progress bar)
        return reference.shape[0] + target.shape[0]

    return time_epochs(loader, sampler, step, epochs, batch_size)


class ReplayedBatches:
    """Epoch 0's batches of a batch source, drawn once before any timing and handed out again
    every epoch: the same steps with no batch drawing at all, the floor against which the loop
    overhead of the real batch sources is measured."""

    def __init__(self, source: Iterable[dict]):
        self.batches = list(source)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.batches)


def stage2_epochs(accelerator: "Accelerator", data: TrainingSet, image_features: torch.Tensor,
                  text_features: torch.Tensor, offsets: torch.Tensor, *, batches: str, batch_size: int,
                  epochs: int, projection_dim: int, hidden_dim: int, seed: int, run_dir: Path) -> Epochs:
    """Stage-2 epochs through the library's own loop (`clip_cir.training.loop.fit`) and stage
    (`stage2.CompositorTraining`: `feature_forward` + `batch_contrastive_loss`), with the program's optimizer and
    defaults, timed by that loop into `run_dir/train_metrics.csv`. Only the batches differ: `batches="tensor"` is what
    `clip_cir.training.stage2` runs (`FeatureBatches`); `"dataloader"` is how it drew them before
    (a per-item `TripletDataset` behind a DataLoader over an `EpochSampler`, prepared by
    Accelerate), the baseline; `"replayed"` is `ReplayedBatches` of `FeatureBatches`. Validation
    is a no-op here, so the loop's one `last/` write after the final epoch is the only extra
    (outside the epoch times)."""
    from clip_cir.config import Stage2Config, TrainingConfig
    from clip_cir.models.combiner import Combiner
    from clip_cir.training import stage2
    from clip_cir.training.datasets import FeatureBatches
    from clip_cir.training.loop import Selection, fit
    from clip_cir.training.optim import LRSchedule, make_optimizer
    from clip_cir.training.run import Run

    defaults = Stage2Config().training  # the program's defaults
    device = accelerator.device
    seed_everything(seed)
    combiner = Combiner(image_features.shape[1], projection_dim, hidden_dim).to(device)
    optimizer = make_optimizer(torch.optim.Adam, combiner.parameters(), lr=defaults.lr,
                               weight_decay=defaults.weight_decay)  # as clip_cir.training.stage2
    if batches in ("tensor", "replayed"):
        loader = FeatureBatches(data, batch_size, seed, device, accelerator.process_index, accelerator.num_processes)
        if batches == "replayed":
            loader = ReplayedBatches(loader)
        prepared, optimizer = accelerator.prepare(combiner, optimizer)
    elif batches == "dataloader":
        loader = DataLoader(TripletDataset(data, seed), batch_size=batch_size,
                            sampler=EpochSampler(len(data.queries), seed), num_workers=0, drop_last=True)
        prepared, optimizer, loader = accelerator.prepare(combiner, optimizer, loader)
    else:
        raise ValueError(f"unknown batches {batches!r}")
    features = [t.to(device) for t in (image_features, text_features, offsets)]

    class TimedCombinerTraining(stage2.CompositorTraining):
        """The program's stage (forward, loss, train mode) without validation or checkpoint metadata."""

        def validate(self, epoch: int) -> dict[str, float]:
            return {}

        def saved_modules(self, epoch: int, metrics: dict) -> dict:
            return {"combiner": (self.combiner, {})}

    stage = TimedCombinerTraining(combiner, prepared, optimizer, loader, stage2.TrainingFeatures(*features),
                                  val_features=[], clip=None)
    stage.selection = Selection(keys=())
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = LRSchedule("const", defaults.lr, 0, epochs * len(loader))
    with quiet():
        fit(accelerator, Run(path=run_dir, is_main=True), stage,
            TrainingConfig(epochs=epochs, validation_frequency=epochs, validation_schedule="every-nth-and-last"),
            schedule, progress=False)
    return Epochs.from_run(run_dir, batch_size)
