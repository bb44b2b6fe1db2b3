"""`clip-cir eval --catalogue DIR` and `clip-cir rank --catalogue DIR`: attribute manipulation on an
attribute catalogue's split, queried through the Python API (`CIRModel.manipulate_features`): with
`--attributes RUN` FLAM's queries, else the change written as a caption (`--attribute-template`)
and composed by `--combining`/`--combiner`. Scored with ADDE's top-k accuracy and NDCG@k."""

from __future__ import annotations

import argparse
import logging

from clip_cir.errors import CIRError

log = logging.getLogger("clip_cir")


def attribute_queries(args: argparse.Namespace):
    """(the catalogue splits, the gallery's raw features, the queries' unit vectors)."""
    from clip_cir.api.attributes import check_catalogue_names
    from clip_cir.api.loading import load
    from clip_cir.data.attribute_splits import read_attribute_splits

    if getattr(args, "zero_shot", None):
        raise CIRError("--zero-shot does not go with --catalogue (FLAM: --attributes RUN; captions: --combining, "
                       "--combiner)")
    if args.attributes and args.combiner:
        raise CIRError("give --attributes or --combiner, not both")
    data = read_attribute_splits(args.catalogue, args.catalogue_layout, args.split, args.image_root)
    cache = False if args.no_cache else (args.cache_dir or True)
    model = load(args.pretrained, model=args.model, combiner=args.combiner,
                 combining=None if args.attributes or args.combiner else args.combining,
                 slerp_alpha=args.slerp_alpha if args.combining == "slerp" and not args.attributes else None,
                 attributes=args.attributes, attribute_template=None if args.attributes else args.attribute_template,
                 device="cpu" if args.cpu else None, transform=args.transform, target_ratio=args.target_ratio,
                 batch_size=args.batch_size, num_workers=args.num_workers or 0, cache=cache, progress=False)
    gallery = data.gallery
    if model.attributes is not None:
        check_catalogue_names(model.attributes, gallery.attributes, gallery.values, gallery.source)
    features = model.image_features(list(gallery.paths))
    references = features[[q.reference for q in data.queries]]
    queries = model.manipulate_features(references, [gallery.attributes[q.attribute] for q in data.queries],
                                        [gallery.values[q.attribute][q.value] for q in data.queries])
    return data, features, queries, model


def format_attribute_metrics(metrics: dict[str, float], label: str) -> str:
    return "\n".join([label] + [f"  {name:<24} {value:.4f}" for name, value in metrics.items()])


def cmd_attribute_eval(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.attribute_metrics import ADDE_TOP_K, attribute_manipulation_metrics
    from clip_cir.models.files import write_json

    k = ADDE_TOP_K if args.top_k is None else args.top_k
    if k < 1:
        raise CIRError(f"--top-k must be positive, got {k}")
    data, gallery, queries, model = attribute_queries(args)
    metrics = attribute_manipulation_metrics(queries, gallery, data.gallery, data.queries, k)
    print(format_attribute_metrics(metrics, f"{data.gallery.source} ({data.split}, {len(data.queries)} queries; "
                                            f"{model.combining})"))
    if args.output:
        write_json(args.output, {k: round(v, 4) for k, v in metrics.items()})
        log.info("metrics written to %s", args.output)


def cmd_attribute_rank(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics, rank_attribute_gallery
    from clip_cir.models.files import write_json

    if args.top_k < 1:
        raise CIRError(f"--top-k must be positive, got {args.top_k}")
    data, gallery_features, queries, model = attribute_queries(args)
    gallery = data.gallery
    ranked = rank_attribute_gallery(queries, gallery_features, args.top_k)
    scores = (queries @ gallery_features.float().div(gallery_features.float().norm(dim=-1, keepdim=True)).T)
    rows = []
    for q, query, top in zip(data.queries, scores, ranked.tolist()):
        rows.append({"reference": gallery.images[q.reference], "attribute": gallery.attributes[q.attribute],
                     "value": gallery.values[q.attribute][q.value],
                     "ranking": [{"name": gallery.images[i], "score": round(float(query[i]), 6)} for i in top]})
    metrics = attribute_manipulation_metrics(queries, gallery_features, gallery, data.queries, args.top_k)
    write_json(args.output, {"catalogue": str(args.catalogue), "split": data.split, "model": model.clip.describe(),
                             "combining": model.combining, "top_k": args.top_k, "queries": rows})
    print(format_attribute_metrics(metrics, f"{gallery.source} ({data.split}, {len(rows)} queries; "
                                            f"{model.combining})"))
    print(f"rankings of {len(rows)} queries written to {args.output}")
