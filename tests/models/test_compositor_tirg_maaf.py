"""TIRG's and MAAF's compositors against their formulas, computed step by step here from each
module's own parameters, and MAAF's handling of caption padding."""

import pytest
import torch
import torch.nn.functional as F

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.maaf import MAAF
from clip_cir.models.compositors.tirg import TIRG

DIM = 8


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def batch_norm_eval(x, bn):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def batch_norm_train(x, bn):
    mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def tirg_with_nontrivial_norms(seed=0):
    torch.manual_seed(seed)
    tirg = TIRG(DIM)
    with torch.no_grad():
        for bn in (tirg.gate[0], tirg.residual[0]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        tirg.gate_weight.fill_(0.7)
        tirg.residual_weight.fill_(2.5)
    return tirg


def tirg_by_hand(tirg, image, text, norm):
    x = torch.cat((image, text), -1)
    gate = torch.sigmoid(linear(torch.relu(norm(x, tirg.gate[0])), tirg.gate[2]))
    hidden = torch.relu(linear(torch.relu(norm(x, tirg.residual[0])), tirg.residual[2]))
    residual = linear(hidden, tirg.residual[4])
    composed = tirg.gate_weight * gate * image + tirg.residual_weight * residual
    return composed / composed.norm(dim=-1, keepdim=True)


# --- TIRG -------------------------------------------------------------------------------------------


def test_tirg_starts_with_its_papers_weights_and_records_its_options():
    tirg = TIRG(640)
    assert (TIRG.name, TIRG.uses_tokens) == ("tirg", False)
    assert tirg.gate_weight.item() == 1.0 and tirg.residual_weight.item() == 10.0
    assert tirg.gate_weight.requires_grad and tirg.residual_weight.requires_grad
    assert tirg.dims == {"clip_feature_dim": 640, "initial_gate_weight": 1.0, "initial_residual_weight": 10.0}
    # Gate: BatchNorm(2D), ReLU, Linear(2D, D); residual: BatchNorm(2D), ReLU, Linear(2D, 2D), ReLU, Linear(2D, D).
    assert [type(m).__name__ for m in tirg.gate] == ["BatchNorm1d", "ReLU", "Linear"]
    assert [type(m).__name__ for m in tirg.residual] == ["BatchNorm1d", "ReLU", "Linear", "ReLU", "Linear"]
    assert (tirg.gate[2].in_features, tirg.gate[2].out_features) == (1280, 640)
    assert [(m.in_features, m.out_features) for m in tirg.residual[2::2]] == [(1280, 1280), (1280, 640)]


def test_tirg_is_gated_image_plus_residual_with_its_two_weights_in_eval_mode():
    tirg = tirg_with_nontrivial_norms().eval()
    torch.manual_seed(1)
    image, text = torch.randn(3, DIM) * 2, torch.randn(3, DIM)
    out = tirg(image, text)
    expected = tirg_by_hand(tirg, image, text, batch_norm_eval)
    assert out.shape == (3, DIM)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_tirg_in_training_normalises_by_the_batch():
    tirg = tirg_with_nontrivial_norms(2).train()
    torch.manual_seed(3)
    image, text = torch.randn(4, DIM), torch.randn(4, DIM)
    expected = tirg_by_hand(tirg, image, text, batch_norm_train)
    assert torch.allclose(tirg(image, text), expected, atol=1e-6)


def test_tirg_weights_each_branch_by_its_own_parameter():
    """Setting one weight to zero leaves exactly the other branch."""
    tirg = tirg_with_nontrivial_norms().eval()
    image, text = torch.randn(2, DIM), torch.randn(2, DIM)
    x = torch.cat((image, text), -1)
    with torch.no_grad():
        tirg.residual_weight.zero_()
        gate_only = tirg(image, text)
        tirg.residual_weight.fill_(2.5)
        tirg.gate_weight.zero_()
        residual_only = tirg(image, text)
    gated = torch.sigmoid(tirg.gate(x)) * image
    assert torch.allclose(gate_only, F.normalize(gated, dim=-1), atol=1e-6)
    assert torch.allclose(residual_only, F.normalize(tirg.residual(x), dim=-1), atol=1e-6)


def test_tirg_rebuilds_from_its_dims_and_rejects_a_bad_dimension():
    tirg = tirg_with_nontrivial_norms().eval()
    rebuilt = TIRG(**tirg.dims)
    rebuilt.load_state_dict(tirg.state_dict())
    image, text = torch.randn(2, DIM), torch.randn(2, DIM)
    assert torch.equal(rebuilt.eval()(image, text), tirg(image, text))
    with pytest.raises(CIRError, match="TIRG needs a positive CLIP feature dimension, got 0"):
        TIRG(0)


# --- MAAF -------------------------------------------------------------------------------------------

CAPTION_LENGTHS = (3, 5, 2)


def token_inputs(seed=0, pad_to=5, dim=DIM):
    """Three images (2x2 grid) and three captions of CAPTION_LENGTHS real tokens, padded to `pad_to`
    with large random values."""
    generator = torch.Generator().manual_seed(seed)
    image = TokenFeatures(torch.randn(3, dim, generator=generator), torch.randn(3, 4, dim, generator=generator),
                          torch.ones(3, 4, dtype=torch.bool), (2, 2))
    real = torch.randn(3, max(CAPTION_LENGTHS), dim, generator=generator)
    pooled = torch.randn(3, dim, generator=generator)
    tokens = torch.randn(3, pad_to, dim, generator=generator) * 50  # drawn last: the rest is the same at any pad_to
    mask = torch.zeros(3, pad_to, dtype=torch.bool)
    for row, length in enumerate(CAPTION_LENGTHS):
        tokens[row, :length] = real[row, :length]
        mask[row, :length] = True
    text = TokenFeatures(pooled, tokens, mask)
    return image, text


def small_maaf(seed=0, **options):
    torch.manual_seed(seed)
    return MAAF(DIM, num_heads=2, feedforward_dim=16, **options).eval()


def test_maaf_defaults_are_yahoo_maafs_clip_sizes_and_rebuild_from_dims():
    maaf = MAAF(640)
    assert (MAAF.name, MAAF.uses_tokens) == ("maaf", True)
    layers = maaf.encoder.layers
    assert len(layers) == 1 and layers[0].self_attn.num_heads == 8 and layers[0].self_attn.embed_dim == 640
    assert layers[0].linear1.out_features == 256 and layers[0].dropout.p == 0.1 and layers[0].norm_first
    assert isinstance(maaf.image_projection, torch.nn.Identity) and maaf.modality_embedding.shape == (2, 640)
    assert (maaf.output_projection.in_features, maaf.output_projection.out_features) == (640, 640)
    assert maaf.dims == {"clip_feature_dim": 640, "width": None, "num_layers": 1, "num_heads": 8,
                         "feedforward_dim": 256, "dropout": 0.1, "modality_embeddings": True, "residual": False,
                         "residual_weight": 1.0}
    small = small_maaf(residual=True, width=6)
    rebuilt = MAAF(**small.dims)
    rebuilt.load_state_dict(small.state_dict())
    image, text = token_inputs()
    assert torch.equal(rebuilt.eval()(image, text), small(image, text))


def test_maaf_output_is_normalised_and_of_clip_dimension_at_any_width():
    image, text = token_inputs()
    for width in (None, 6, 12):
        maaf = small_maaf(width=width)
        out = maaf(image, text)
        assert out.shape == (3, DIM)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert small_maaf(width=6).image_projection.out_features == 6


def test_maaf_padding_values_change_nothing():
    maaf = small_maaf()
    image, text = token_inputs()
    out = maaf(image, text)
    changed = text.tokens.clone()
    changed[~text.mask] = torch.randn(int((~text.mask).sum()), DIM) * 1000
    assert torch.equal(maaf(image, TokenFeatures(text.pooled, changed, text.mask)), out)
    changed[~text.mask] = float("nan")
    assert torch.equal(maaf(image, TokenFeatures(text.pooled, changed, text.mask)), out)


def test_maaf_padding_length_changes_nothing_and_equals_each_caption_alone():
    maaf = small_maaf()
    image, text = token_inputs(pad_to=5)
    out = maaf(image, text)
    _, longer = token_inputs(pad_to=9)  # same real tokens, four more padding positions
    assert torch.equal(longer.tokens[longer.mask], text.tokens[text.mask])
    assert torch.allclose(maaf(image, longer), out, atol=1e-6)
    with torch.inference_mode():  # torch's fused encoder path, as in serving
        assert torch.allclose(maaf(image, longer), out, atol=1e-6)
    for row, length in enumerate(CAPTION_LENGTHS):  # each query alone, with no padding at all
        alone = TokenFeatures(text.pooled[row:row + 1], text.tokens[row:row + 1, :length],
                              torch.ones(1, length, dtype=torch.bool))
        assert torch.allclose(maaf(image[row:row + 1], alone), out[row:row + 1], atol=1e-6)


def test_maaf_adds_one_modality_embedding_per_modality_to_the_encoder_input():
    maaf = small_maaf()
    image, text = token_inputs()
    seen = []
    maaf.encoder.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args[0], kwargs)),
                                           with_kwargs=True)
    maaf(image, text)
    sequence, kwargs = seen[0]
    embedding = maaf.modality_embedding
    assert sequence.shape == (3, 4 + 1 + 5, DIM)
    # Image: the grid tokens, then the global feature, each plus row 0.
    assert torch.allclose(sequence[:, :4], image.tokens + embedding[0])
    assert torch.allclose(sequence[:, 4], image.pooled + embedding[0])
    # Caption: its real tokens plus row 1; padding is zeroed (then embedded) and masked out.
    caption = sequence[:, 5:]
    assert torch.allclose(caption[text.mask], text.tokens[text.mask] + embedding[1])
    assert torch.allclose(caption[~text.mask], embedding[1].expand(int((~text.mask).sum()), DIM))
    expected_padding = torch.cat((torch.zeros(3, 5, dtype=torch.bool), ~text.mask), dim=1)
    assert torch.equal(kwargs["src_key_padding_mask"], expected_padding)
    # The embeddings change the query; without them it is the same network on the bare tokens.
    plain = small_maaf(modality_embeddings=False)
    plain.load_state_dict({k: v for k, v in maaf.state_dict().items() if k != "modality_embedding"})
    assert plain.modality_embedding is None
    assert not torch.allclose(plain(image, text), maaf(image, text), atol=1e-3)
    with torch.no_grad():
        maaf.modality_embedding.zero_()
    assert torch.allclose(plain(image, text), maaf(image, text), atol=1e-6)


def encoder_output(maaf, image, text):
    outputs = []
    handle = maaf.encoder.register_forward_hook(lambda module, args, output: outputs.append(output))
    result = maaf(image, text)
    handle.remove()
    return outputs[0], result


def test_maaf_pools_each_image_resolution_then_averages_image_and_caption():
    maaf = small_maaf()
    image, text = token_inputs()
    out, result = encoder_output(maaf, image, text)
    rows = []
    for row, length in enumerate(CAPTION_LENGTHS):
        grid_mean = out[row, :4].mean(0)
        image_pooled = (grid_mean + out[row, 4]) / 2
        caption_pooled = out[row, 5:5 + length].mean(0)
        rows.append((image_pooled + caption_pooled) / 2)
    fused = linear(torch.stack(rows), maaf.output_projection)
    assert torch.allclose(result, fused / fused.norm(dim=-1, keepdim=True), atol=1e-6)


def test_maaf_residual_attention_fusion_adds_the_weighted_output_to_the_clip_sum():
    maaf = small_maaf(residual=True, residual_weight=0.25)
    image, text = token_inputs()
    out, result = encoder_output(maaf, image, text)
    attended = linear(maaf.fused(image, text), maaf.output_projection)
    expected = image.pooled + text.pooled + 0.25 * attended
    assert torch.allclose(result, expected / expected.norm(dim=-1, keepdim=True), atol=1e-6)
    # The same weights without the residual path give the attention output alone.
    plain = small_maaf()
    plain.load_state_dict(maaf.state_dict())
    assert torch.allclose(plain(image, text), F.normalize(attended, dim=-1), atol=1e-6)
    assert not torch.allclose(plain(image, text), result, atol=1e-3)
    assert MAAF(DIM, num_heads=2, residual=True).residual_weight == 1.0  # yahoo/maaf's default


def test_maaf_rejects_sizes_that_do_not_fit():
    with pytest.raises(CIRError, match="MAAF width 10 is not divisible by its 8 attention heads"):
        MAAF(10)
    with pytest.raises(CIRError, match="MAAF sizes must be positive"):
        MAAF(8, num_layers=0)
    with pytest.raises(CIRError, match=r"MAAF dropout must be in \[0, 1\), got 1.5"):
        MAAF(8, dropout=1.5)
    image, text = token_inputs(dim=6)
    with pytest.raises(CIRError, match="MAAF expects 8-d CLIP token features, got image 6-d and caption 6-d"):
        small_maaf()(image, text)


def test_maaf_encoder_matrices_start_glorot_uniform_query_key_value_each_on_its_own():
    maaf = MAAF(64)
    layer = maaf.encoder.layers[0]
    blocks = [*layer.self_attn.in_proj_weight.chunk(3), layer.self_attn.out_proj.weight]
    for block in blocks:  # fan in = fan out = 64: bound sqrt(6 / 128)
        assert 0.9 * (6 / 128) ** 0.5 < block.abs().max().item() <= (6 / 128) ** 0.5
    for weight in (layer.linear1.weight, layer.linear2.weight):  # 64 <-> 256: bound sqrt(6 / 320)
        assert 0.9 * (6 / 320) ** 0.5 < weight.abs().max().item() <= (6 / 320) ** 0.5
