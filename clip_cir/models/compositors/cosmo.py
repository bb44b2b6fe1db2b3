"""CoSMo (Lee, Kim & Han, CVPR 2021): content-style modulation of the reference image's grid by the
caption, on frozen CLIP grid tokens.

The grid is instance-normalised (its style removed), its content is modulated by disentangled
multi-modal non-local blocks with the caption, then a style built from the reference's own
channel statistics (gated by the caption) plus statistics predicted from the caption is put back
(AdaIN-like), and the grid is average-pooled and projected. Paper: Sec. 4, Eq. 7-20; the authors'
code: github.com/postBG/CosMo.pytorch (models/compositors/, models/attention_modules/). Sources of
each choice: docs/compositors.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import Compositor, TokenFeatures


def instance_normalise(grid: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel of each sample to zero mean and unit (biased) variance over the grid cells
    ([B, L, D], Eq. 7), as `nn.InstanceNorm2d` without affine parameters."""
    mean = grid.mean(dim=1, keepdim=True)
    variance = grid.var(dim=1, keepdim=True, unbiased=False)
    return (grid - mean) / torch.sqrt(variance + eps)


def channel_statistics(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's style: per-channel mean and (biased, no eps) standard deviation over the grid
    cells, each [B, 1, D]."""
    return grid.mean(dim=1, keepdim=True), grid.std(dim=1, keepdim=True, unbiased=False)


class EqualizedLinear(nn.Module):
    """A linear layer whose weight is stored as N(0, 1) and scaled by sqrt(2 / fan_in) at each call
    (the equalised learning rate the authors' style modulator uses), so the layers that predict
    styles learn at the same pace whatever their width."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = math.sqrt(2.0 / in_features)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.scale, self.bias)


class DisentangledMultimodalNonLocal(nn.Module):
    """One DMNL block (Sec. 4.1.2): every cell attends to every cell with the sum of a pairwise
    cell-cell softmax and a unary caption-cell softmax (Eq. 18, rows summing to 2 as in the
    authors' code); values come from each cell with the caption concatenated onto it (Eq. 9)."""

    def __init__(self, dim: int, text_dim: int, num_heads: int):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise CIRError(f"CoSMo: num_heads must divide the feature dimension {dim} (got {num_heads})")
        self.num_heads = num_heads
        self.merge = nn.Linear(dim + text_dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.text_key = nn.Linear(text_dim, dim)
        self.output = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, heads, L, D / heads]."""
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def attention(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The attention weights [B, heads, L, L]: softmax_j(q_i.k_j) + softmax_j(z_j.W_t t), both
        scaled by sqrt(head size)."""
        head_dim = grid.shape[-1] // self.num_heads
        queries, keys = self._heads(self.query(grid)), self._heads(self.key(grid))
        pairwise = torch.softmax(queries @ keys.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        text_query = self._heads(self.text_key(text)[:, None])                  # [B, heads, 1, d]
        unary = torch.softmax(text_query @ self._heads(grid).transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        return pairwise + unary

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The content update [B, L, D] (W_r of the attended values) for `grid` [B, L, D] and the
        caption `text` [B, N]."""
        cells_with_text = torch.cat((grid, text[:, None].expand(-1, grid.shape[1], -1)), dim=-1)
        values = self._heads(self.value(self.merge(cells_with_text)))
        attended = self.attention(grid, text) @ values                         # [B, heads, L, d]
        return self.output(attended.transpose(1, 2).flatten(2))


class CoSMo(Compositor):
    """Content modulator (instance norm + DMNL blocks, residual) then style modulator (gated
    reference statistics + caption-predicted statistics), average-pooled and projected to the
    CLIP space.

    Options: `num_heads` (8, the paper's Fig. 6a and the released config), `num_blocks` (2, the
    authors' code stacks two DMNL blocks), `norm_eps` (1e-5, InstanceNorm2d's)."""

    name = "cosmo"
    uses_tokens = True
    reads_caption_tokens = False  # the caption's global feature t (Eq. 2), never its words

    def __init__(self, clip_feature_dim: int, num_heads: int = 8, num_blocks: int = 2, norm_eps: float = 1e-5):
        super().__init__(clip_feature_dim, num_heads=num_heads, num_blocks=num_blocks, norm_eps=norm_eps)
        if num_blocks < 1:
            raise CIRError(f"CoSMo: num_blocks must be at least 1 (got {num_blocks})")
        dim = clip_feature_dim
        self.norm_eps = norm_eps
        self.blocks = nn.ModuleList(DisentangledMultimodalNonLocal(dim, dim, num_heads) for _ in range(num_blocks))
        self.block_weights = nn.Parameter(torch.ones(num_blocks))
        self.style_gate = EqualizedLinear(dim, 2 * dim)
        self.style_shift = EqualizedLinear(dim, 2 * dim)
        with torch.no_grad():
            self.style_shift.bias[:dim] = 1.0        # the predicted std starts at 1, the predicted mean at 0
        self.projection = nn.Linear(dim, dim)

    def modulate_content(self, normalised: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """o = z + w_b * DMNL_b(z, t), block after block (Eq. 8)."""
        out = normalised
        for weight, block in zip(self.block_weights, self.blocks):
            out = out + weight * block(out, text)
        return out

    def modulate_style(self, content: torch.Tensor, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x_c = gamma * o + beta with gamma = sigmoid(phi_g(t)) * sigma_x + f_g(t) and
        beta = sigmoid(phi_b(t)) * mu_x + f_b(t) (Eq. 19-20)."""
        mean, std = channel_statistics(reference)
        std_gate, mean_gate = torch.sigmoid(self.style_gate(text)).chunk(2, dim=-1)
        new_std, new_mean = self.style_shift(text).chunk(2, dim=-1)
        gamma = std_gate[:, None] * std + new_std[:, None]
        beta = mean_gate[:, None] * mean + new_mean[:, None]
        return gamma * content + beta

    def forward(self, image: TokenFeatures, text: TokenFeatures) -> torch.Tensor:
        """Normalised query features [B, D] from the reference's grid tokens and the caption's
        global feature (CoSMo reads one sentence vector; the caption's tokens are not used)."""
        reference, caption = image.tokens, text.pooled
        content = self.modulate_content(instance_normalise(reference, self.norm_eps), caption)
        composed = self.modulate_style(content, reference, caption)
        return F.normalize(self.projection(composed.mean(dim=1)), dim=-1)
