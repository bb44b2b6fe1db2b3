"""Attribute manipulation on the synthetic attribute catalogue: top-k accuracy and NDCG@k, overall
and per changed attribute, of the reference image alone, the zero-shot sum with the change written
as a caption, the method's stage 1 + sum and stage 1 + Combiner trained on such captions (the
catalogue's training queries written as a triplet set, `--dataset triplets`), and FLAM
(`clip-cir train-attributes`). Every model starts from the same random-init `cir-tiny-vit`, so the
numbers compare methods on one small CPU budget, not CLIP's pretrained features.

    python benchmarks/attributes.py [--workdir DIR] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import clip_cir
from clip_cir.api.attributes import DEFAULT_ATTRIBUTE_TEMPLATE, template_captions
from clip_cir.data.attribute_splits import read_attribute_splits
from clip_cir.data.attributes import AttributeCatalogue, generate_queries
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """A random-init `cir-tiny-vit` saved as a checkpoint every program loads alike."""
    import open_clip

    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs

    torch.manual_seed(seed)
    torch.save({"epoch": 0, "CLIP": open_clip.create_model("cir-tiny-vit").state_dict()}, path)
    return path


def _captions(catalogue: AttributeCatalogue, queries) -> list[str]:
    return template_captions(DEFAULT_ATTRIBUTE_TEMPLATE, [catalogue.attributes[q.attribute] for q in queries],
                             [catalogue.values[q.attribute][q.value] for q in queries])


def write_triplets(root: Path, train: AttributeCatalogue, test: AttributeCatalogue, test_queries) -> Path:
    """The catalogue's queries as a triplet set: training queries by ADDE's rule on the training
    catalogue (target: the first other image with the target labels), the test queries as `val`
    (every image with the target labels is a ground truth), template captions."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    queries = generate_queries(train)
    for q, caption in zip(queries, _captions(train, queries)):
        hits = [i for i in train.matches(q.target).nonzero()[0].tolist() if i != q.reference]
        if hits:
            rows.append({"reference": str(train.paths[q.reference]), "caption": caption,
                         "target": str(train.paths[hits[0]])})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = [{"reference": str(test.paths[q.reference]), "caption": caption,
            "target": [str(test.paths[i]) for i in test.matches(q.target).nonzero()[0].tolist()]}
           for q, caption in zip(test_queries, _captions(test, test_queries))]
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    (root / "val.gallery.txt").write_text("".join(f"{p}\n" for p in test.paths))
    return root


def per_attribute(model, data, k: int) -> dict[str, dict[str, float]]:
    """Metrics of all queries and of each changed attribute's, from the API's manipulated vectors."""
    gallery = data.gallery
    features = model.image_features(list(gallery.paths))
    queries = model.manipulate_features(features[[q.reference for q in data.queries]],
                                        [gallery.attributes[q.attribute] for q in data.queries],
                                        [gallery.values[q.attribute][q.value] for q in data.queries])
    out = {"all": attribute_manipulation_metrics(queries, features, gallery, data.queries, k)}
    for a, name in enumerate(gallery.attributes):
        rows = [i for i, q in enumerate(data.queries) if q.attribute == a]
        out[name] = attribute_manipulation_metrics(queries[rows], features, gallery, [data.queries[i] for i in rows], k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where data and runs go (default: a temp dir)")
    parser.add_argument("--k", type=int, default=5, help="top-k (default: %(default)s; 64 gallery images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage1-epochs", type=int, default=5)
    parser.add_argument("--stage2-epochs", type=int, default=30)
    parser.add_argument("--flam-epochs", type=int, default=100, help="half embedders, half G/D")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="attributes-bench-"))
    files = write_attribute_catalogue(work / "catalogue", seed=args.seed, size=32, n=256, n_test=64)
    data = read_attribute_splits(files.image_root)
    clip = tiny_checkpoint(work / "tiny.pt", args.seed)
    triplets = write_triplets(work / "triplets", data.train, data.gallery, data.queries)
    common = dict(output_dir=work / "runs", num_workers=0, no_progress=True, cache_dir=work / "cache", seed=args.seed)
    seconds = {}
    started = time.perf_counter()
    stage1 = clip_cir.finetune(dataset="triplets", data_root=triplets, pretrained=clip, epochs=args.stage1_epochs,
                               batch_size=32, lr=1e-4, experiment_name="stage1", **common)
    seconds["stage 1 + sum"] = time.perf_counter() - started
    started = time.perf_counter()
    stage2 = clip_cir.train_combiner(dataset="triplets", data_root=triplets, pretrained=stage1.best_checkpoint,
                                     epochs=args.stage2_epochs, batch_size=64, lr=1e-3, validation_frequency=5,
                                     experiment_name="stage2", **common)
    seconds["stage 1 + Combiner"] = seconds["stage 1 + sum"] + time.perf_counter() - started
    started = time.perf_counter()
    flam = clip_cir.train_attributes(catalogue=files.image_root, pretrained=clip, epochs=args.flam_epochs,
                                     embedding_epochs=args.flam_epochs // 2, embedder_hidden=128,
                                     manipulator_hidden=128, discriminator_hidden=128, gan_lr=1e-3, top_k=args.k,
                                     validation_frequency=args.flam_epochs // 4, experiment_name="flam", **common)
    seconds["FLAM"] = time.perf_counter() - started
    load = dict(device="cpu", cache=work / "cache", progress=False)
    models = {"reference image alone": clip_cir.load(clip, combining="image", **load),
              "zero-shot sum + template caption": clip_cir.load(clip, combining="sum", **load),
              "stage 1 + sum": clip_cir.load(stage1.best_checkpoint, combining="sum", **load),
              "stage 1 + Combiner": clip_cir.load(stage2.path, **load),
              "FLAM": clip_cir.load(clip, attributes=flam.path, **load)}
    k, names = args.k, ["all", *data.gallery.attributes]
    print(f"Synthetic attribute catalogue: 256 training images (20% of labels missing), 64 test images, "
          f"{len(data.queries)} test queries; random-init cir-tiny-vit (seed {args.seed}); top-{k} accuracy / "
          f"NDCG@{k} (ADDE's definitions).\n")
    print("| method | " + " | ".join(names) + " | training s |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, model in models.items():
        metrics = per_attribute(model, data, k)
        cells = [f"{metrics[n][f'top{k}_accuracy']:.3f} / {metrics[n][f'ndcg_at{k}']:.3f}" for n in names]
        print(f"| {label} | " + " | ".join(cells) + f" | {seconds.get(label, 0):.0f} |")


if __name__ == "__main__":
    main()
