"""Token-level CLIP features: per tower family, the tokens equal a step-by-step computation with
open_clip's own modules, the pooled feature is exactly the global one, the caption mask marks
exactly the tokens through EOT, and towers without an exact definition are refused in one line.

Tolerance: float32 on a CPU, atol = rtol = 1e-5 (the same layers in the same order; only the
shapes of a few matrix products differ)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer

from clip_cir.errors import CIRError
from clip_cir.models.token_features import image_token_features, pool_grid, text_token_features
from clip_cir.models.towers import encode_text, trim_tokens

TOL = dict(atol=1e-5, rtol=1e-5)
CAPTIONS = ["is red", "has a small blue triangle on the left instead of the big green circle", "x"]


def _pixels(n: int = 1, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _vit_by_hand(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch tokens [B, 16, D], class token's pooled feature [B, D]) of a 64-px ViT-16, step by step."""
    x = visual.conv1(pixels)  # [B, width, 4, 4]
    b, width = x.shape[:2]
    patches = x.permute(0, 2, 3, 1).reshape(b, 16, width)  # row-major: (0,0), (0,1), ...
    x = torch.cat([visual.class_embedding.expand(b, 1, width), patches], dim=1) + visual.positional_embedding
    x = visual.transformer(visual.ln_pre(x))
    x = visual.ln_post(x)
    return x[:, 1:] @ visual.proj, x[:, 0] @ visual.proj


def _resnet_by_hand(visual, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense features of a ModifiedResNet: c_proj(v_proj(last stage)), no positional embedding."""
    x = visual.act1(visual.bn1(visual.conv1(pixels)))
    x = visual.act2(visual.bn2(visual.conv2(x)))
    x = visual.avgpool(visual.act3(visual.bn3(visual.conv3(x))))
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    b, c, rows, cols = x.shape
    cells = x.permute(0, 2, 3, 1).reshape(b, rows * cols, c)
    return visual.attnpool.c_proj(visual.attnpool.v_proj(cells))


@torch.no_grad()
def test_vit_tokens_are_the_patch_tokens_after_ln_post_and_proj(make_tiny_clip):
    model = make_tiny_clip("cir-tiny-vit")
    pixels = _pixels(2)
    got = image_token_features(model, pixels)
    tokens, class_token = _vit_by_hand(model.visual, pixels)
    assert got.grid == (4, 4) and got.tokens.shape == (2, 16, 128)
    torch.testing.assert_close(got.tokens, tokens, **TOL)
    torch.testing.assert_close(got.pooled, class_token, **TOL)  # the by-hand path is the tower's
    assert torch.equal(got.pooled, model.encode_image(pixels))
    assert got.mask.dtype == torch.bool and got.mask.shape == (2, 16) and bool(got.mask.all())
    # One image alone gives its own tokens (no batch effects).
    torch.testing.assert_close(image_token_features(model, pixels[1:]).tokens, tokens[1:], **TOL)


@torch.no_grad()
def test_resnet_tokens_are_the_last_stage_through_v_proj_and_c_proj(make_tiny_clip):
    model = make_tiny_clip("cir-tiny-rn")
    pixels = _pixels(2)
    got = image_token_features(model, pixels)
    assert got.grid == (2, 2) and got.tokens.shape == (2, 4, 64)
    torch.testing.assert_close(got.tokens, _resnet_by_hand(model.visual, pixels), **TOL)
    assert torch.equal(got.pooled, model.encode_image(pixels))
    assert bool(got.mask.all())


@torch.no_grad()
def test_grid_pooling_averages_the_cells_adaptive_pooling_covers(make_tiny_clip):
    model = make_tiny_clip("cir-tiny-vit")
    pixels = _pixels(1)
    full = _vit_by_hand(model.visual, pixels)[0].reshape(1, 4, 4, -1)
    for grid, bins in ((3, [(0, 2), (1, 3), (2, 4)]), (2, [(0, 2), (2, 4)]), (1, [(0, 4)])):
        got = image_token_features(model, pixels, grid=grid)
        expected = torch.stack([full[0, r0:r1, c0:c1].mean(dim=(0, 1)) for r0, r1 in bins for c0, c1 in bins])
        assert got.grid == (grid, grid) and got.mask.shape == (1, grid * grid)
        torch.testing.assert_close(got.tokens[0], expected, **TOL)
        assert torch.equal(got.pooled, model.encode_image(pixels))
    # A grid at least as large as the native one leaves it as it is.
    same = image_token_features(model, pixels, grid=9)
    assert same.grid == (4, 4)
    torch.testing.assert_close(same.tokens[0], full[0].reshape(16, -1), **TOL)


def test_grid_pooling_of_a_non_square_grid_pools_each_side_on_its_own():
    tokens = torch.arange(3 * 6 * 2, dtype=torch.float32).reshape(1, 18, 2)  # rows of 6 cells, row-major
    got, shape = pool_grid(tokens, (3, 6), 4)
    assert shape == (3, 4)
    cells = tokens.reshape(3, 6, 2)
    bins = [(math.floor(i * 6 / 4), math.ceil((i + 1) * 6 / 4)) for i in range(4)]
    assert bins == [(0, 2), (1, 3), (3, 5), (4, 6)]
    expected = torch.stack([cells[r, c0:c1].mean(dim=0) for r in range(3) for c0, c1 in bins])
    torch.testing.assert_close(got[0], expected, atol=0, rtol=0)
    assert pool_grid(tokens, (3, 6), 6)[1] == (3, 6)
    with pytest.raises(CIRError, match="at least 1 cell a side, not 0"):
        pool_grid(tokens, (3, 6), 0)


def _clip_text_by_hand(model, ids: torch.Tensor) -> torch.Tensor:
    n = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    return model.ln_final(x) @ model.text_projection


@pytest.mark.parametrize("name", ["cir-tiny-vit", "cir-tiny-rn"])
@torch.no_grad()
def test_caption_tokens_run_from_start_through_eot_after_ln_final_and_projection(make_tiny_clip, name):
    model = make_tiny_clip(name)
    tokenizer = open_clip.get_tokenizer(name)
    ids = trim_tokens(model, tokenizer(CAPTIONS))
    got = text_token_features(model, ids)
    lengths = [len(tokenizer.encode(c)) + 2 for c in CAPTIONS]  # SOT, words, EOT
    assert lengths[0] < lengths[1] and got.tokens.shape == (3, max(lengths), model.text_projection.shape[1])
    assert got.grid is None
    assert got.mask.tolist() == [[i < n for i in range(max(lengths))] for n in lengths]
    by_hand = _clip_text_by_hand(model, ids)
    for row, n in enumerate(lengths):
        assert int(ids[row, n - 1]) == tokenizer.eot_token_id
        torch.testing.assert_close(got.tokens[row, :n], by_hand[row, :n], **TOL)
        assert not got.tokens[row, n:].any()  # padding: zeros
    assert torch.equal(got.pooled, encode_text(model, ids))
    # The EOT token's feature is the pooled one.
    torch.testing.assert_close(got.tokens[torch.arange(3), torch.tensor(lengths) - 1], got.pooled, **TOL)


@torch.no_grad()
def test_padding_and_the_other_captions_do_not_change_a_captions_tokens(make_tiny_clip):
    model = make_tiny_clip("cir-tiny-vit")
    tokenizer = open_clip.get_tokenizer("cir-tiny-vit")
    full = tokenizer(CAPTIONS)  # the whole context length
    alone = text_token_features(model, trim_tokens(model, full[:1]))
    untrimmed = text_token_features(model, full)
    assert alone.tokens.shape[1] == 4 and untrimmed.tokens.shape[1] == untrimmed.mask.sum(1).max() < full.shape[1]
    torch.testing.assert_close(untrimmed.tokens[0, :4], alone.tokens[0], **TOL)
    assert not untrimmed.tokens[0, 4:].any() and untrimmed.mask[0].tolist() == [True] * 4 + [False] * 12
    torch.testing.assert_close(untrimmed.pooled, encode_text(model, trim_tokens(model, full)), **TOL)
    # Other padding ids after EOT: same tokens.
    noisy = full.clone()
    noisy[0, 4:] = 320
    torch.testing.assert_close(text_token_features(model, noisy[:1]).tokens[0, :4], alone.tokens[0], **TOL)


@torch.no_grad()
def test_custom_text_clip_with_an_open_clip_text_transformer(make_tiny_clip):
    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs and the tiny EVA tower

    torch.manual_seed(0)
    model = open_clip.create_model("cir-tiny-eva").eval()
    tokenizer = open_clip.get_tokenizer("cir-tiny-eva")
    ids = tokenizer(CAPTIONS[:2])
    got = text_token_features(model, ids)
    text = model.text
    x = text.token_embedding(ids) + text.positional_embedding
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask)) @ text.text_projection
    lengths = (ids == tokenizer.eot_token_id).int().argmax(dim=1) + 1
    assert got.mask.sum(dim=1).tolist() == lengths.tolist() and got.tokens.shape[1] == int(lengths.max())
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got.tokens[row, :n], x[row, :n], **TOL)
    assert torch.equal(got.pooled, encode_text(model, ids))
    with pytest.raises(CIRError, match=r"^token features are not available for TimmModel image towers \(only"):
        image_token_features(model, _pixels(1))


@torch.no_grad()
def test_eos_pooling_towers_end_each_caption_at_their_own_eos_id():
    """A tower pooling at `eos_id` 5 (not the largest id, so not where argmax would look)."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    text_cfg = dict(context_length=8, vocab_size=20, width=16, heads=1, layers=1, pool_type="eos", eos_id=5)
    model = CustomTextCLIP(16, dict(image_size=32, patch_size=16, width=16, head_width=16, layers=1), text_cfg).eval()
    ids = torch.tensor([[1, 17, 9, 5, 0, 0, 0, 0], [1, 5, 19, 18, 5, 0, 0, 0]])
    got = text_token_features(model, ids)
    assert got.mask.tolist() == [[True] * 4, [True, True, False, False]]
    text = model.text
    x = text.token_embedding(ids) + text.positional_embedding
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask)) @ text.text_projection
    torch.testing.assert_close(got.tokens[0], x[0, :4], **TOL)
    torch.testing.assert_close(got.tokens[1, :2], x[1, :2], **TOL)
    assert torch.equal(got.pooled, encode_text(model, ids))
    torch.testing.assert_close(got.tokens[[0, 1], [3, 1]], got.pooled, **TOL)


@torch.no_grad()
def test_hugging_face_towers_cls_pooled_give_tokens_and_mean_pooled_are_refused(hf_standins):
    from open_clip.hf_model import ClsLastHiddenStatePooler

    from clip_cir.models.clip import load_clip

    clip = load_clip("cir-tiny-hftext")
    model, ids = clip.model.eval(), clip.tokenizer(CAPTIONS[:2])
    with pytest.raises(CIRError, match="^token features are not available for Hugging Face text towers with a "
                                       "MeanPooler: the pooled feature is not the projection of any one token$"):
        text_token_features(model, ids)
    model.text.pooler = ClsLastHiddenStatePooler()
    got = text_token_features(model, ids)
    pad = model.text.config.pad_token_id
    real = (ids != pad).sum(dim=1)
    assert got.mask.sum(dim=1).tolist() == real.tolist() and got.tokens.shape[1] == int(real.max()) < ids.shape[1]
    hidden = model.text.transformer(input_ids=ids, attention_mask=(ids != pad).long()).last_hidden_state
    by_hand = model.text.proj(hidden)
    for row, n in enumerate(real.tolist()):
        torch.testing.assert_close(got.tokens[row, :n], by_hand[row, :n], **TOL)
        assert not got.tokens[row, n:].any()
    assert torch.equal(got.pooled, encode_text(model, ids))
    torch.testing.assert_close(got.tokens[:, 0], got.pooled, **TOL)


class _Tower(torch.nn.Module):
    """A CLIP with only an image tower: `encode_image` is the tower, as in open_clip."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def _vit(**options) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2.0,
                             output_dim=16, **options).eval()


@torch.no_grad()
def test_final_ln_after_pool_towers_get_ln_post_on_their_tokens_too():
    tower = _Tower(_vit(final_ln_after_pool=True, pool_type="avg"))
    pixels = _pixels(1, 32)
    got = image_token_features(tower, pixels)
    visual = tower.visual
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(1, 1, 32), x], dim=1) + visual.positional_embedding
    x = visual.transformer(visual.ln_pre(x))[:, 1:]
    torch.testing.assert_close(got.tokens, visual.ln_post(x) @ visual.proj, **TOL)
    assert torch.equal(got.pooled, tower.encode_image(pixels))
    torch.testing.assert_close(got.pooled, visual.ln_post(x.mean(dim=1)) @ visual.proj, **TOL)


def test_towers_without_an_exact_token_definition_are_refused_in_one_line(make_tiny_clip):
    coca = r"^token features are not available for VisionTransformer image towers with an attentional pool \(CoCa\)"
    with pytest.raises(CIRError, match=coca + " or no pooling: their outputs are not image patches$"):
        image_token_features(_Tower(_vit(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)),
                             _pixels(1, 32))
    dropping = _Tower(_vit(patch_dropout=0.5)).train()
    with pytest.raises(CIRError, match="^the image tower returned 2 patch tokens, not 2 x 2: patch dropout is active"):
        image_token_features(dropping, _pixels(1, 32))
    assert image_token_features(dropping.eval(), _pixels(1, 32)).tokens.shape == (1, 4, 16)

    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs

    siglip = open_clip.create_model("cir-tiny-siglip").eval()
    with pytest.raises(CIRError, match="^token features are not available for text towers pooling the 'last' token: "
                                       "the tower does not mark where a caption ends$"):
        text_token_features(siglip, torch.ones(1, 32, dtype=torch.long))
    with pytest.raises(CIRError, match="^token features are not available for Linear text towers$"):
        text_token_features(torch.nn.Linear(2, 2), torch.ones(1, 4, dtype=torch.long))
