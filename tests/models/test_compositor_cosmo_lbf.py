"""CoSMo and LBF on CLIP tokens: their formulas worked by hand on small fixed inputs, caption padding
that changes nothing, normalised [B, D] queries for any grid and caption length."""

from __future__ import annotations

import math

import pytest
import torch

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.cosmo import (
    CoSMo,
    DisentangledMultimodalNonLocal,
    channel_statistics,
    instance_normalise,
)
from clip_cir.models.compositors.lbf import LBF, AttentionLayer, grid_boxes, masked_mean

# One 4-cell grid, three channels: channel 0 = 1, 2, 3, 4; channel 1 = 2, 2, 2, 6; channel 2 = 0, 0, 2e-3, 2e-3
# (variance 1e-6, below the eps, so the eps shows).
GRID = torch.tensor([[[1.0, 2.0, 0.0], [2.0, 2.0, 0.0], [3.0, 2.0, 2e-3], [4.0, 6.0, 2e-3]]], dtype=torch.float64)


def features(batch: int, dim: int, grid: tuple[int, int], caption_lengths: list[int], padded_to: int,
             seed: int = 0) -> tuple[TokenFeatures, TokenFeatures]:
    """Random image grid tokens and caption tokens; caption i has `caption_lengths[i]` real tokens, then
    padding up to `padded_to`."""
    generator = torch.Generator().manual_seed(seed)
    cells = grid[0] * grid[1]
    image = TokenFeatures(torch.randn(batch, dim, generator=generator),
                          torch.randn(batch, cells, dim, generator=generator),
                          torch.ones(batch, cells, dtype=torch.bool), grid)
    mask = torch.arange(padded_to)[None, :] < torch.tensor(caption_lengths)[:, None]
    text = TokenFeatures(torch.randn(batch, dim, generator=generator),
                         torch.randn(batch, padded_to, dim, generator=generator), mask)
    return image, text


def repadded(text: TokenFeatures, extra: int, fill: float) -> TokenFeatures:
    """The same caption with its padding overwritten by `fill` and `extra` more padded tokens of `fill`."""
    batch, _, dim = text.tokens.shape
    tokens = torch.cat((text.tokens.masked_fill(~text.mask[..., None], fill), torch.full((batch, extra, dim), fill)), 1)
    mask = torch.cat((text.mask, torch.zeros(batch, extra, dtype=torch.bool)), 1)
    return TokenFeatures(text.pooled, tokens, mask)


# ---- CoSMo ------------------------------------------------------------------------------------------------

def test_instance_normalisation_by_hand():
    eps = 1e-5
    out = instance_normalise(GRID, eps)[0]
    expected0 = [(v - 2.5) / math.sqrt(1.25 + eps) for v in (1, 2, 3, 4)]           # mean 2.5, biased var 5/4
    expected1 = [(v - 3.0) / math.sqrt(3.0 + eps) for v in (2, 2, 2, 6)]            # mean 3, biased var 12/4
    expected2 = [(v - 1e-3) / math.sqrt(1e-6 + eps) for v in (0, 0, 2e-3, 2e-3)]    # var 1e-6: +-0.3015, not +-1
    assert out[:, 0].tolist() == pytest.approx(expected0, abs=1e-12)
    assert out[:, 1].tolist() == pytest.approx(expected1, abs=1e-12)
    assert out[:, 2].tolist() == pytest.approx(expected2, abs=1e-12)
    assert expected2[0] == pytest.approx(-0.30151, abs=1e-5)
    assert out.mean(dim=0).tolist() == pytest.approx([0, 0, 0], abs=1e-12)


def test_style_statistics_by_hand_are_the_biased_mean_and_std():
    mean, std = channel_statistics(GRID)
    assert mean.shape == std.shape == (1, 1, 3)
    assert mean[0, 0].tolist() == pytest.approx([2.5, 3.0, 1e-3], abs=1e-12)
    assert std[0, 0].tolist() == pytest.approx([math.sqrt(1.25), math.sqrt(3.0), 1e-3], abs=1e-12)


def test_style_parameters_start_as_the_authors_code_sets_them():
    """The predicted std's bias starts at 1 and the mean's at 0; the style weights are stored N(0, 1) and scaled
    by sqrt(2 / fan_in) when used."""
    model = CoSMo(4, num_heads=2)
    assert model.style_shift.bias.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert model.style_gate.bias.tolist() == [0] * 8
    t = torch.randn(3, 4)
    expected = t @ (model.style_gate.weight * math.sqrt(2 / 4)).T
    assert torch.allclose(model.style_gate(t), expected, atol=1e-6)


def test_style_application_step_by_step():
    torch.manual_seed(1)
    model = CoSMo(3, num_heads=1).double()
    with torch.no_grad():
        model.style_shift.bias.copy_(torch.randn(6))
        model.style_gate.bias.copy_(torch.randn(6))
    text = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    content = torch.randn(1, 4, 3, dtype=torch.float64)
    out = model.modulate_style(content, GRID, text)[0]

    scale = math.sqrt(2 / 3)
    mean, std = [2.5, 3.0, 1e-3], [math.sqrt(1.25), math.sqrt(3.0), 1e-3]
    gate_w, gate_b = model.style_gate.weight.tolist(), model.style_gate.bias.tolist()
    shift_w, shift_b = model.style_shift.weight.tolist(), model.style_shift.bias.tolist()
    t = text[0].tolist()

    def linear(w, b, row):
        return sum(w[row][k] * scale * t[k] for k in range(3)) + b[row]

    for c in range(3):
        std_gate = 1 / (1 + math.exp(-linear(gate_w, gate_b, c)))          # sigmoid(phi_gamma(t)), first half
        mean_gate = 1 / (1 + math.exp(-linear(gate_w, gate_b, 3 + c)))     # sigmoid(phi_beta(t)), second half
        gamma = std_gate * std[c] + linear(shift_w, shift_b, c)            # Eq. 19
        beta = mean_gate * mean[c] + linear(shift_w, shift_b, 3 + c)
        for cell in range(4):
            assert out[cell, c].item() == pytest.approx(gamma * content[0, cell, c].item() + beta, abs=1e-12)


def test_dmnl_attention_and_update_by_hand():
    """Two heads of two channels, three cells: a_ij = softmax_j(q_i.k_j / sqrt 2) + softmax_j(z_j.(W_t t) / sqrt 2)
    within each head, values W_v W_merge [z_j, t], output W_r y + b_r."""
    torch.manual_seed(2)
    block = DisentangledMultimodalNonLocal(4, 4, num_heads=2).double()
    z, t = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)

    def matvec(layer, x):
        w = layer.weight.tolist()
        b = layer.bias.tolist() if layer.bias is not None else [0.0] * len(w)
        return [sum(w[r][k] * x[k] for k in range(len(x))) + b[r] for r in range(len(w))]

    cells, text = z[0].tolist(), t[0].tolist()
    q = [matvec(block.query, c) for c in cells]
    k = [matvec(block.key, c) for c in cells]
    v = [matvec(block.value, matvec(block.merge, c + text)) for c in cells]
    tq = matvec(block.text_key, text)
    expected_weights = [[[0.0] * 3 for _ in range(3)] for _ in range(2)]
    y = [[0.0] * 4 for _ in range(3)]
    for h, hs in enumerate((slice(0, 2), slice(2, 4))):
        def dot(a, b, hs=hs):
            return sum(x * w for x, w in zip(a[hs], b[hs])) / math.sqrt(2)
        unary = [math.exp(dot(cells[j], tq)) for j in range(3)]
        unary = [u / sum(unary) for u in unary]
        for i in range(3):
            pair = [math.exp(dot(q[i], k[j])) for j in range(3)]
            for j in range(3):
                weight = pair[j] / sum(pair) + unary[j]
                expected_weights[h][i][j] = weight
                for c in range(hs.start, hs.stop):
                    y[i][c] += weight * v[j][c]
    weights = block.attention(z, t)[0]
    for h in range(2):
        for i in range(3):
            assert weights[h, i].tolist() == pytest.approx(expected_weights[h][i], abs=1e-12)
            assert sum(expected_weights[h][i]) == pytest.approx(2.0)
    out = block(z, t)[0]
    for i in range(3):
        assert out[i].tolist() == pytest.approx(matvec(block.output, y[i]), abs=1e-12)


def test_cosmo_forward_composes_content_then_style_then_pool_and_project():
    torch.manual_seed(3)
    model = CoSMo(8, num_heads=2, norm_eps=0.5).double().eval()
    image, text = features(2, 8, (2, 3), [3, 5], 6)
    image, text = image.to("cpu", torch.float64), text.to("cpu", torch.float64)
    with torch.no_grad():
        model.block_weights.copy_(torch.tensor([0.7, -1.3]))
    z = instance_normalise(image.tokens, 0.5)
    first = z + 0.7 * model.blocks[0](z, text.pooled)
    content = first - 1.3 * model.blocks[1](first, text.pooled)
    composed = model.modulate_style(content, image.tokens, text.pooled)
    projected = composed.mean(dim=1) @ model.projection.weight.T + model.projection.bias
    expected = projected / projected.norm(dim=-1, keepdim=True)
    assert torch.allclose(model(image, text), expected, atol=1e-12)


@pytest.mark.parametrize("grid", [(2, 3), (1, 5), (4, 4)])
def test_cosmo_gives_normalised_queries_and_ignores_caption_tokens(grid):
    model = CoSMo(16, num_heads=4).eval()
    image, text = features(3, 16, grid, [2, 7, 4], 7)
    out = model(image, text)
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.equal(model(image, repadded(text, 5, 1e3)), out)


def test_cosmo_keeps_its_options_and_rebuilds_from_them():
    model = CoSMo(640)
    assert model.dims == {"clip_feature_dim": 640, "num_heads": 8, "num_blocks": 2, "norm_eps": 1e-5}
    rebuilt = CoSMo(**CoSMo(32, num_heads=4, num_blocks=1).dims)
    assert len(rebuilt.blocks) == 1 and rebuilt.blocks[0].num_heads == 4
    with pytest.raises(CIRError, match="num_heads must divide the feature dimension 30"):
        CoSMo(30, num_heads=8)
    with pytest.raises(CIRError, match="num_blocks must be at least 1"):
        CoSMo(32, num_heads=4, num_blocks=0)


# ---- LBF --------------------------------------------------------------------------------------------------

def test_grid_boxes_of_a_2x3_grid_by_hand():
    third, half = 1 / 3, 1 / 2
    expected = [  # x / W, y / H, w / W, h / H, row-major
        [0, 0, third, half], [third, 0, third, half], [2 * third, 0, third, half],
        [0, half, third, half], [third, half, third, half], [2 * third, half, third, half],
    ]
    boxes = grid_boxes(2, 3)
    assert boxes.shape == (6, 4)
    for row, want in zip(boxes.tolist(), expected):
        assert row == pytest.approx(want, abs=1e-7)
    with pytest.raises(CIRError, match=r"at least one row and one column \(got 0 x 3\)"):
        grid_boxes(0, 3)


def test_masked_mean_by_hand():
    tokens = torch.tensor([[[1.0, 10.0], [3.0, 20.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(tokens, mask).tolist() == [[2.0, 15.0]]


def test_attention_layer_by_hand():
    """One head of width 2: a = softmax over the real keys of q.k / sqrt 2, h = LN(x + W_o a + b_o),
    out = LN(h + W_2 relu(W_1 h + b_1) + b_2), LayerNorm with eps 1e-5 and its affine parameters."""
    torch.manual_seed(9)
    layer = AttentionLayer(2, num_heads=1, feedforward_dim=3, dropout=0.1).double().eval()
    with torch.no_grad():
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    queries, keys = torch.randn(1, 2, 2, dtype=torch.float64), torch.randn(1, 3, 2, dtype=torch.float64)
    keys[0, 2] = 1e3                                                         # masked: must not count
    out = layer(queries, keys, torch.tensor([[True, True, False]]))[0]

    def affine(weight, bias, x):
        return [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weight.tolist(), bias.tolist())]

    def layer_norm(norm, x):
        mean = sum(x) / len(x)
        var = sum((v - mean) ** 2 for v in x) / len(x)
        return [(v - mean) / math.sqrt(var + 1e-5) * w + b
                for v, w, b in zip(x, norm.weight.tolist(), norm.bias.tolist())]

    w_in, b_in = layer.attention.in_proj_weight, layer.attention.in_proj_bias
    keys_real = [keys[0, j].tolist() for j in range(2)]
    k = [affine(w_in[2:4], b_in[2:4], x) for x in keys_real]
    v = [affine(w_in[4:6], b_in[4:6], x) for x in keys_real]
    for i in range(2):
        x = queries[0, i].tolist()
        q = affine(w_in[0:2], b_in[0:2], x)
        scores = [math.exp(sum(a * b for a, b in zip(q, kj)) / math.sqrt(2)) for kj in k]
        attended = [sum(scores[j] / sum(scores) * v[j][c] for j in range(2)) for c in range(2)]
        projected = affine(layer.attention.out_proj.weight, layer.attention.out_proj.bias, attended)
        h = layer_norm(layer.norm1, [a + b for a, b in zip(x, projected)])
        hidden = [max(0.0, u) for u in affine(layer.feedforward[0].weight, layer.feedforward[0].bias, h)]
        f = affine(layer.feedforward[3].weight, layer.feedforward[3].bias, hidden)
        assert out[i].tolist() == pytest.approx(layer_norm(layer.norm2, [a + b for a, b in zip(h, f)]), abs=1e-10)


def test_lbf_entities_average_each_cell_with_its_box_embedding():
    torch.manual_seed(4)
    model = LBF(2, hidden_dim=2, num_heads=1).double()
    tokens = torch.randn(1, 6, 2, dtype=torch.float64)
    image = TokenFeatures(tokens[:, 0], tokens, torch.ones(1, 6, dtype=torch.bool), (2, 3))
    entities = model.entities(image)[0]
    wp, bp = model.position.weight.tolist(), model.position.bias.tolist()
    wr, br = model.region.weight.tolist(), model.region.bias.tolist()
    boxes = [[0, 0, 1 / 3, 1 / 2], [1 / 3, 0, 1 / 3, 1 / 2], [2 / 3, 0, 1 / 3, 1 / 2],
             [0, 1 / 2, 1 / 3, 1 / 2], [1 / 3, 1 / 2, 1 / 3, 1 / 2], [2 / 3, 1 / 2, 1 / 3, 1 / 2]]
    for cell, box in enumerate(boxes):
        position = [sum(wp[r][k] * box[k] for k in range(4)) + bp[r] for r in range(2)]
        average = [(tokens[0, cell, r].item() + position[r]) / 2 for r in range(2)]
        want = [sum(wr[r][k] * average[k] for k in range(2)) + br[r] for r in range(2)]
        assert entities[cell].tolist() == pytest.approx(want, abs=1e-12)


def test_lbf_forward_composes_self_attention_then_both_cross_attentions_then_pools():
    torch.manual_seed(8)
    model = LBF(16, hidden_dim=8, num_heads=2, num_layers=2, feedforward_dim=16).double().eval()
    image, text = features(2, 16, (2, 2), [2, 5], 5)
    image, text = image.to("cpu", torch.float64), text.to("cpu", torch.float64)
    regions, words = model.entities(image), model.word(text.tokens)
    for layer in model.image_layers:
        regions = layer(regions, regions, image.mask)
    for layer in model.text_layers:
        words = layer(words, words, text.mask)
    visual = model.regions_to_words(regions, words, text.mask).mean(dim=1)      # every cell is real
    linguistic = torch.stack([model.words_to_regions(words, regions, image.mask)[i, :n].mean(dim=0)
                              for i, n in enumerate((2, 5))])
    joint = model.output(torch.cat((visual, linguistic), dim=-1))
    assert torch.allclose(model(image, text), joint / joint.norm(dim=-1, keepdim=True), atol=1e-12)


@pytest.mark.parametrize("grad", [True, False])
def test_lbf_caption_padding_changes_nothing(grad):
    torch.manual_seed(5)
    model = LBF(16, hidden_dim=16, num_heads=4, feedforward_dim=32).eval()
    image, text = features(3, 16, (2, 3), [2, 6, 4], 6)
    with torch.set_grad_enabled(grad):
        out = model(image, text)
        for extra, fill in ((0, 1e3), (9, -7.0), (3, float("nan"))):
            torch.testing.assert_close(model(image, repadded(text, extra, fill)), out, rtol=0, atol=1e-6)
        changed = TokenFeatures(text.pooled, text.tokens.clone(), text.mask)
        changed.tokens[0, 1] += 1                                             # a real word: the query moves
        assert (model(image, changed) - out).abs().max() > 1e-3


def test_lbf_masked_image_cells_change_nothing():
    """Image masks are all True today; a masked cell is still kept out of every attention and pooling."""
    torch.manual_seed(6)
    model = LBF(16, hidden_dim=16, num_heads=4, feedforward_dim=32).eval()
    image, text = features(2, 16, (2, 3), [3, 5], 5)
    image.mask[:, -2:] = False
    out = model(image, text)
    for fill in (1e3, float("nan")):
        changed = TokenFeatures(image.pooled, image.tokens.clone(), image.mask, image.grid)
        changed.tokens[:, -2:] = fill
        torch.testing.assert_close(model(changed, text), out, rtol=0, atol=1e-6)


def test_lbf_masked_image_cells_are_as_if_absent(monkeypatch):
    """Masking the last two cells of a 2x3 grid gives the query of the first four cells alone at the same boxes:
    masked cells are keys of no attention and not pooled."""
    import clip_cir.models.compositors.lbf as lbf_module

    torch.manual_seed(7)
    model = LBF(16, hidden_dim=16, num_heads=4, feedforward_dim=32).eval()
    image, text = features(2, 16, (2, 3), [3, 5], 5)
    image.mask[:, -2:] = False
    out = model(image, text)
    full_boxes = grid_boxes(2, 3)
    monkeypatch.setattr(lbf_module, "grid_boxes", lambda rows, cols, dtype: full_boxes[:4].to(dtype))
    first_four = TokenFeatures(image.pooled, image.tokens[:, :4], image.mask[:, :4], (1, 4))
    torch.testing.assert_close(model(first_four, text), out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid, lengths", [((2, 3), [1, 4]), ((1, 7), [5, 5]), ((3, 3), [2, 9])])
def test_lbf_gives_normalised_queries_for_any_grid_and_caption(grid, lengths):
    model = LBF(24, hidden_dim=16, num_heads=2, num_layers=1, feedforward_dim=32).eval()
    image, text = features(2, 24, grid, lengths, max(lengths))
    out = model(image, text)
    assert out.shape == (2, 24)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_lbf_needs_the_image_grid():
    model = LBF(16, hidden_dim=16, num_heads=4)
    image, text = features(1, 16, (2, 3), [3], 4)
    with pytest.raises(CIRError, match=r"LBF needs the image's token grid: got grid None for 6 tokens"):
        model(TokenFeatures(image.pooled, image.tokens, image.mask, None), text)
    with pytest.raises(CIRError, match=r"got grid \(2, 2\) for 6 tokens"):
        model(TokenFeatures(image.pooled, image.tokens, image.mask, (2, 2)), text)


def test_lbf_keeps_its_options_and_rebuilds_from_them():
    assert LBF(512).dims == {"clip_feature_dim": 512, "hidden_dim": 512, "num_heads": 8, "num_layers": 2,
                             "feedforward_dim": 1024, "dropout": 0.1}
    rebuilt = LBF(**LBF(32, hidden_dim=16, num_heads=2, num_layers=3).dims)
    assert len(rebuilt.image_layers) == len(rebuilt.text_layers) == 3
    assert rebuilt.output.in_features == 32 and rebuilt.output.out_features == 32
    with pytest.raises(CIRError, match="num_heads must divide hidden_dim 30"):
        LBF(32, hidden_dim=30, num_heads=4)


# ---- both ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [CoSMo, LBF])
def test_no_tensor_grows_as_cells_squared_times_width(cls):
    """At 196 cells (ViT-B-16's grid) no operation of the forward or backward allocates anything near
    [B, L, L, D]: the largest tensors are the [B, heads, L, L] attention maps."""
    from torch.profiler import ProfilerActivity, profile

    dim, batch, heads, cells = 64, 2, 4, 196
    model = cls(dim, num_heads=heads, **({"hidden_dim": 64, "feedforward_dim": 128} if cls is LBF else {})).train()
    image, text = features(batch, dim, (14, 14), [9, 20], 20)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        model(image, text).sum().backward()
    largest = max(event.self_cpu_memory_usage for event in profiler.events())     # bytes one operation allocates
    attention_maps = batch * heads * cells * cells * 4
    assert largest <= attention_maps < batch * cells * cells * dim * 4 / 8
