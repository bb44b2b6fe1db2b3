"""The web demo's fixtures, shared by the files in this folder: a random-init tiny CLIP, its
feature cache, CIRR's val split as the gallery, the engine and the Flask app on it (module-wide:
each file builds its own), a test client, and a real validation query."""

from __future__ import annotations

import pytest
import torch
from helpers import DEMO_UPLOAD_LIMIT

from clip_cir.apps.demo.app import create_app
from clip_cir.apps.demo.engine import DemoEngine
from clip_cir.data import load_splits
from clip_cir.encoding.extraction import FeatureCache
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.models.clip import load_clip
from clip_cir.models.combiner import element_wise_sum


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny-vit")


@pytest.fixture(scope="module")
def encode(clip, tmp_path_factory) -> EncodeOptions:
    cache = FeatureCache(tmp_path_factory.mktemp("demo_cache"))
    return EncodeOptions(transform=clip.image_transform("targetpad", 1.25), num_workers=0, batch_size=64,
                         image_cache=cache, progress=False)


@pytest.fixture(scope="module")
def splits(synth_root):
    return load_splits("cirr", synth_root, "val")


@pytest.fixture(scope="module")
def engine(clip, splits, encode) -> DemoEngine:
    return DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="element-wise sum")


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, default_k=7, max_upload_bytes=DEMO_UPLOAD_LIMIT)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def query(splits):
    """A real validation query: (reference name, caption)."""
    q = splits[0].queries[0]
    return q.reference, q.eval_caption

