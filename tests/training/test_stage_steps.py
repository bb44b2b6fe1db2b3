"""What each stage feeds the loss, against the method written out on features computed directly
(docs/method.md, stages 1 and 2): stage 1's query norm(f_I(reference) + f_T(caption)) and key norm(f_I(target)),
stage 2's Combiner(reference, drawn caption form) and norm(target).

The other training tests compare runs of our code with runs of our code (accumulated or not,
one process or two, cached pixels or decoded): a step that picked the wrong rows would pass
them all. These pin the rows and the formula.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip_cir.models.clip import load_clip
from clip_cir.models.transforms import OPENAI_MEAN, OPENAI_STD, build_transform
from clip_cir.training.encoders import ClipEncoder
from clip_cir.training.stage1 import CLIPFineTuning
from clip_cir.training.stage2 import TrainingFeatures, feature_forward

CAPTIONS = ["is red and round", "has two more squares", "the same shape but blue", "is smaller"]


def test_stage2_forward_takes_each_querys_drawn_caption_form_and_normalises_the_target():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, -5.0]])
    # Three queries: one caption form, four forms, two forms (rows 0 | 1..4 | 5..6).
    texts = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    offsets = torch.tensor([0, 1, 5])
    batch = {"query": torch.tensor([1, 2, 0]), "form": torch.tensor([3, 1, 0]),
             "reference": torch.tensor([0, 1, 3]), "target": torch.tensor([2, 3, 1])}

    def combiner(image, text):  # a stand-in that shows which rows it was given
        return torch.cat([image, text], dim=-1)

    query, key = feature_forward(combiner, TrainingFeatures(images, texts, offsets), batch)
    # query 1 form 3 -> text row 1 + 3 = 4; query 2 form 1 -> row 5 + 1 = 6; query 0 form 0 -> row 0
    assert query.tolist() == [[1, 0, 8, 9], [0, 2, 12, 13], [0, -5, 0, 1]]
    # targets (3, 4), (0, -5), (0, 2), each normalised on its own
    assert torch.allclose(key, torch.tensor([[0.6, 0.8], [0.0, -1.0], [0.0, 1.0]]))


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny-vit")


def _by_hand_pixels(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


@pytest.mark.parametrize("towers", ["both", "text", "image"])
def test_stage1_forward_is_the_method_on_raw_features(clip, towers):
    """Queries 0..3 over images 0..5; a frozen tower's features come from its precomputed table
    (text: every caption form of every query, indexed by offset + drawn form)."""
    generator = torch.Generator().manual_seed(1)
    model = clip.model.eval()
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=generator)
    reference, target = torch.tensor([0, 2, 4, 1]), torch.tensor([3, 5, 0, 2])
    with torch.no_grad():
        image_table = model.encode_image(_by_hand_pixels(pixels))
        # Two forms per query; each query draws form 1 except query 2 (form 0). Form 1 is the caption.
        forms = [[f"{c} (other form)", c] for c in CAPTIONS]
        text_table = model.encode_text(clip.tokenizer([f for pair in forms for f in pair]))
    offsets = torch.tensor([0, 2, 4, 6])
    form = torch.tensor([1, 1, 0, 1])
    captions = [forms[q][f] for q, f in enumerate(form.tolist())]
    batch = {"query": torch.arange(4), "form": form, "caption": captions, "reference": reference,
             "target": target, "reference_image": pixels[reference], "target_image": pixels[target]}
    stage = CLIPFineTuning(clip, ClipEncoder(model), None, None, build_transform("targetpad", 64),
                           device=torch.device("cpu"), towers=towers, image_features=image_table,
                           text_features=text_table, text_offsets=offsets, val_splits=[], validation_encode=None,
                           accum_steps=1)
    with torch.no_grad():
        query, key = stage.forward(batch)
        text = model.encode_text(clip.tokenizer(captions))  # full context length, untrimmed
    assert torch.allclose(text, text_table[offsets + form], atol=1e-5)
    expected_query = F.normalize(image_table[reference] + text, dim=-1)
    expected_key = F.normalize(image_table[target], dim=-1)
    assert torch.allclose(query, expected_query, atol=1e-5)
    assert torch.allclose(key, expected_key, atol=1e-5)
    # And the loss the step takes: cross-entropy at scale 100, query i -> target i.
    loss = stage.loss((query, key))
    assert loss.item() == pytest.approx(F.cross_entropy(100 * expected_query @ expected_key.T,
                                                        torch.arange(4)).item(), rel=1e-4)


def test_stage2_forward_gathers_the_token_rows_of_the_reference_and_the_drawn_caption_form():
    """A token compositor gets the reference image's tokens (its training-image row) and the drawn
    caption form's tokens (row offset + form, ragged: padded to the batch's longest, masked), with
    their global features; the target is the normalised global feature, as for the Combiner."""
    import numpy as np

    from clip_cir.encoding.split_features import TokenRows
    from clip_cir.encoding.token_store import TokenChunk, TokenTable
    from clip_cir.training.stage2 import TrainingFeatures

    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, -5.0]])
    texts = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    offsets = torch.tensor([0, 1, 5])
    # Image i's 2 x 1 grid: tokens (10i, 10i) and (10i + 1, 10i + 1). Caption row r has r % 3 + 1
    # tokens, token j = (100r + j, 100r + j).
    image_tokens = np.array([[10 * i + j] * 2 for i in range(4) for j in range(2)], dtype=np.float16)
    caption_lengths = np.array([r % 3 + 1 for r in range(7)], dtype=np.int32)
    caption_tokens = np.array([[100 * r + j] * 2 for r in range(7) for j in range(r % 3 + 1)], dtype=np.float16)
    features = TrainingFeatures(
        images, texts, offsets,
        TokenRows(images, TokenTable([TokenChunk(0, np.full(4, 2, np.int32), image_tokens)], 2, (2, 1)),
                  torch.arange(4)),
        TokenRows(texts, TokenTable([TokenChunk(0, caption_lengths, caption_tokens)], 2, None), torch.arange(7)))
    batch = {"query": torch.tensor([1, 2, 0]), "form": torch.tensor([3, 1, 0]),
             "reference": torch.tensor([0, 1, 3]), "target": torch.tensor([2, 3, 1])}
    seen = {}

    def compositor(image, text):
        seen.update(image=image, text=text)
        return image.pooled

    query, key = feature_forward(compositor, features, batch)
    image, text = seen["image"], seen["text"]
    assert image.grid == (2, 1) and image.tokens.dtype == torch.float32
    assert image.tokens[:, :, 0].tolist() == [[0, 1], [10, 11], [30, 31]] and image.mask.all()
    assert image.pooled.tolist() == [[1, 0], [0, 2], [0, -5]]
    # caption rows 4, 6, 0 (lengths 2, 1, 1): padded to 2, masked
    assert text.pooled.tolist() == [[8, 9], [12, 13], [0, 1]]
    assert text.tokens[:, :, 1].tolist() == [[400, 401], [600, 0], [0, 0]]
    assert text.mask.tolist() == [[True, True], [True, False], [True, False]]
    assert torch.allclose(key, torch.tensor([[0.6, 0.8], [0.0, -1.0], [0.0, 1.0]]))
