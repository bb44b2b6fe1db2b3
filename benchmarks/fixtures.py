"""What the benchmarks measure on: synthetic CIRR data, the programs' model and training set,
photo-like image files where the real datasets' files are, and random-feature triplets for stage 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from harness import quiet

from clip_cir.data import load_splits
from clip_cir.data.synthetic import generate
from clip_cir.models.clip import LoadedCLIP, load_clip
from clip_cir.models.transforms import ImageTransform
from clip_cir.training.datasets import TrainingSet
from clip_cir.training.run import seed_everything

SYNTH_SIZE = 64
"""Short side of the synthetic images: the tiny CLIP's input size (`cir-tiny-vit`, 64 px:
`clip_cir/models/configs/cir-tiny-vit.json`; docs/backbones.md, "Offline test matrix")."""
PRETRAIN_RECIPE = dict(batch_size=64, lr=5e-4, weight_decay=0.1, lr_scheduler="cosine")
"""The quickstart's pretraining recipe (clip_cir/apps/quickstart.py) without its fixed warm-up:
what the benchmarks pretrain their frozen tiny CLIP with."""
VAL_QUERIES = 50
"""The benchmarks train on the every-nth-and-last schedule, so they validate after their last
epoch; a small val split keeps that short
(validation is outside the epoch timings anyway)."""


def make_synthetic_cirr(root: Path, n_train: int, seed: int, n_val: int = VAL_QUERIES,
                        size: int = SYNTH_SIZE) -> Path:
    """Synthetic data in the CIRR layout (`clip_cir.data.synthetic`); returns the `--data-root`."""
    data_root = root / "data"
    with quiet():
        generate(data_root, n_train=n_train, n_val=n_val, n_test=0, size=size, seed=seed, progress=False)
    return data_root


def load_training_set(data_root: Path) -> TrainingSet:
    """The CIRR training triplets exactly as the programs read them."""
    return TrainingSet.from_splits(load_splits("cirr", data_root, "train"))


def load_model(model_name: str, seed: int) -> tuple[LoadedCLIP, ImageTransform]:
    """The programs' model and preprocessing: `load_clip` seeded like their `seed_everything`,
    targetpad 1.25 (their default)."""
    seed_everything(seed)
    with quiet():
        clip = load_clip(model_name)
    return clip, clip.image_transform("targetpad", 1.25)


PHOTO_KINDS: dict[str, tuple[int, int, str]] = {"png": (500, 375, "PNG"), "jpeg": (400, 600, "JPEG")}
"""Width, height and format of the two real datasets' typical files: CIRR's (NLVR2) PNG photos
and FashionIQ's JPEG product shots."""


def render_photos(folder: Path, kind: str, count: int, seed: int, unique: int | None = None) -> list[Path]:
    """`count` photo-like files of one `PHOTO_KINDS` kind: a smooth random colour field, mid-scale
    texture and fine grain. Why not flat synthetic shapes: decoding cost grows with the
    compressed size, and these land where the real files do (PNG ~320 KB, CIRR's are 200-400 KB;
    JPEG at quality 90 ~50 KB, FashionIQ's are 30-60 KB). With `unique`, only that many are
    rendered and the rest are copies of them (rendering costs more than decoding; a copy costs
    the same to decode)."""
    import numpy as np
    from PIL import Image

    width, height, fmt = PHOTO_KINDS[kind]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if unique is not None and i >= unique:
            path = folder / f"{kind}_{i:05d}{paths[i % unique].suffix}"
            shutil.copyfile(paths[i % unique], path)
            paths.append(path)
            continue

        def field(rows: int, cols: int, resample: int) -> np.ndarray:
            small = Image.fromarray(rng.uniform(0, 255, (rows, cols, 3)).astype(np.uint8))
            return np.asarray(small.resize((width, height), resample), dtype=np.float32)

        pixels = (0.6 * field(6, 8, Image.BICUBIC) + 0.4 * field(height // 16, width // 16, Image.BILINEAR)
                  + rng.normal(0.0, 4.0, (height, width, 3)))
        path = folder / f"{kind}_{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        options = {"quality": 90} if fmt == "JPEG" else {}
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, fmt, **options)
        paths.append(path)
    return paths


def synthetic_triplets(triplets: int, images: int, forms: int, seed: int) -> TrainingSet:
    """A training set of `triplets` queries over `images` image names (no files: stage 2 only
    indexes precomputed features), each with `forms` caption forms (CIRR 1, FashionIQ 4)."""
    from clip_cir.data.types import Query

    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randint(images, (triplets, 2), generator=generator).tolist()
    names = [f"img{i:06d}" for i in range(images)]
    queries = [Query(qid=str(i), reference=names[r], captions=(f"caption {i}",),
                     train_captions=tuple(f"caption {i} form {f}" for f in range(forms)),
                     eval_caption=f"caption {i}", target=names[t]) for i, (r, t) in enumerate(pairs)]
    return TrainingSet(queries=queries, image_names=names, image_paths=[Path(n) for n in names])
