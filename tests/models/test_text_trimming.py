"""Exact text trimming: a batch of token ids cut after its longest caption's EOT token gives the
same features as the full context length, for every causal EOT-pooling CLIP text tower; other
towers are detected and keep the full length."""

from __future__ import annotations

import open_clip
import pytest
import torch

from clip_cir.models.clip import load_clip
from clip_cir.models.towers import can_trim_text, encode_text, trim_tokens

CAPTIONS = ["is red", "has a small blue triangle on the left instead of the big green circle",
            "Same shirt but with long sleeves and a darker colour, no logo on the chest.", "x"]


def _full_and_trimmed(model: torch.nn.Module, tokenizer) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    tokens = tokenizer(CAPTIONS)
    trimmed = trim_tokens(model, tokens)
    with torch.no_grad():
        return model.encode_text(tokens), encode_text(model, trimmed), tokens.shape[1], trimmed.shape[1]


@pytest.mark.parametrize("name", ["cir-tiny-vit", "cir-tiny-rn", "RN50x4", "ViT-B-32"])
def test_trimmed_text_features_equal_full_length(name):
    torch.manual_seed(0)
    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs

    model = open_clip.create_model(name).eval()
    full, trimmed, full_length, trimmed_length = _full_and_trimmed(model, open_clip.get_tokenizer(name))
    longest = max(len(open_clip.get_tokenizer(name).encode(c)) if hasattr(open_clip.get_tokenizer(name), "encode")
                  else 0 for c in CAPTIONS)
    assert can_trim_text(model)
    assert trimmed_length < full_length and trimmed_length == longest + 2  # SOT + tokens + EOT
    assert full.shape == trimmed.shape
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    # Every caption's own feature is unchanged, not only the longest one's.
    assert (trimmed - full).abs().max() <= 1e-5


def test_gradients_through_trimmed_text_equal_full_length():
    clip = load_clip("cir-tiny-vit")
    tokens = clip.tokenizer(CAPTIONS)
    grads = []
    for batch in (tokens, trim_tokens(clip.model, tokens)):
        clip.model.zero_grad()
        encode_text(clip.model, batch).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in clip.model.named_parameters()
                      if p.grad is not None and not n.startswith("visual.")})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        # The same sums over fewer (all-zero) terms: equal up to float rounding, relative to the gradient's size.
        scale = grads[0][key].abs().max()
        assert (grads[1][key] - grads[0][key]).abs().max() <= 1e-5 * scale, key


def test_a_tower_without_causal_eot_pooling_keeps_the_full_length():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                 text_cfg={"context_length": 32, "width": 32, "heads": 2, "layers": 1,
                           "no_causal_mask": True, "pool_type": "last"}).eval()
    tokenizer = open_clip.SimpleTokenizer(context_length=32)
    assert not can_trim_text(model)
    tokens = tokenizer(CAPTIONS)
    assert trim_tokens(model, tokens).shape == tokens.shape
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), atol=0, rtol=0)


def test_an_eos_pooling_tower_is_cut_after_its_eos_token_not_its_largest_id():
    """A causal tower that pools at a given EOS id (open_clip's `pool_type: eos`, MetaCLIP 2's
    "worldwide" models): the batch is cut after the last EOS (position 3), though larger ids sit
    before it (40 at position 2): cut at the largest id, the first caption would lose its EOS."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                 text_cfg={"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 2,
                           "pool_type": "eos", "eos_id": 5}).eval()
    tokens = torch.tensor([[1, 30, 40, 5, 0, 0, 0, 0],
                           [1, 7, 5, 0, 0, 0, 0, 0]])
    assert can_trim_text(model)
    trimmed = trim_tokens(model, tokens)
    assert trimmed.tolist() == [[1, 30, 40, 5], [1, 7, 5, 0]]
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, trimmed), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_loaded_clip_tokenize_trims_and_features_match(tiny_checkpoint):
    from clip_cir.encoding.extraction import encode_texts

    clip = load_clip(None, str(tiny_checkpoint))
    assert clip.tokenize(CAPTIONS).shape[1] < clip.tokenizer(CAPTIONS).shape[1]
    with torch.no_grad():
        full = clip.model.encode_text(clip.tokenizer(CAPTIONS))
    torch.testing.assert_close(encode_texts(clip, CAPTIONS, progress=False), full, atol=1e-5, rtol=1e-5)


def test_loaded_clip_tokenize_remembers_training_captions_and_stays_exact(tiny_checkpoint, monkeypatch):
    from clip_cir.models import clip as clip_module

    clip = load_clip(None, str(tiny_checkpoint))
    calls: list[list[str]] = []
    tokenizer = clip.tokenizer
    clip.tokenizer = lambda texts: calls.append(list(texts)) or tokenizer(texts)

    def expected(texts: list[str]) -> torch.Tensor:
        return trim_tokens(clip.model, tokenizer(texts))

    first = ["x", CAPTIONS[1], "x", CAPTIONS[0]]
    out = clip.tokenize(first, remember=True)
    assert torch.equal(out, expected(first)) and out.dtype == torch.long  # repeated captions within a batch
    assert calls == [["x", CAPTIONS[1], CAPTIONS[0]]]  # each new caption tokenized once
    # A later batch: only the caption never seen is tokenized; trimmed to this batch's longest.
    second = [CAPTIONS[0], CAPTIONS[3], "is blue"]
    out = clip.tokenize(second, remember=True)
    assert calls[1:] == [["is blue"]]
    assert torch.equal(out, expected(second)) and out.shape[1] < expected(first).shape[1]
    # Without remember (evaluation, demo queries) nothing is kept: the tokenizer runs every time.
    assert torch.equal(clip.tokenize(["is purple"]), expected(["is purple"])) and "is purple" not in clip._token_rows
    assert clip.tokenize([], remember=True).shape[0] == 0
    # Past the cap the tokenizer runs every time, still exact.
    monkeypatch.setattr(clip_module, "TOKEN_CACHE_ROWS", 4)
    third = ["is green", CAPTIONS[1]]
    before = len(calls)
    assert torch.equal(clip.tokenize(third, remember=True), expected(third))
    assert calls[before:] == [third] and "is green" not in clip._token_rows


def test_tokenizer_that_draws_at_random_is_never_remembered(tiny_checkpoint):
    clip = load_clip(None, str(tiny_checkpoint))
    tokenizer = clip.tokenizer
    clip.tokenizer = lambda texts: tokenizer(texts)
    clip.tokenizer.reduction_fn = object()  # open_clip sets this for reduction_mask='random', 'shuffle', ...
    clip.tokenize(["is red"], remember=True)
    assert clip._token_rows == {}
