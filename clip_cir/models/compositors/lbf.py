"""LBF (Hosseinzadeh & Wang, CVPR 2020, "Composed Query Image Retrieval Using Locally Bounded
Features") on frozen CLIP tokens.

The reference image is a set of locally bounded entities, each a visual feature averaged with an
embedding of its normalised box; the caption is a sequence of word features. Each modality is
processed by self-attention layers, then regions attend to words (linguistically attended visual
features) and words attend to regions (visually attended linguistic features), and the two are
pooled into one joint query. LBF's regions come from Faster R-CNN; here they are the cells of
CLIP's grid, with the cells' boxes as positions. Sources of each choice: docs/compositors.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import Compositor, TokenFeatures

BOX_FEATURES = 4
"""A region's position: (x / W, y / H, w / W, h / H), its top-left corner and size over the image's."""


def grid_boxes(rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalised box [x, y, w, h] of every cell of a rows x cols grid over the image, in
    row-major order ([rows * cols, 4]): LBF's region positions when the regions are grid cells."""
    if rows < 1 or cols < 1:
        raise CIRError(f"a token grid needs at least one row and one column (got {rows} x {cols})")
    row, col = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                              indexing="ij")
    x, y = col.flatten() / cols, row.flatten() / rows
    return torch.stack((x, y, torch.full_like(x, 1 / cols), torch.full_like(y, 1 / rows)), dim=1).to(dtype)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over the real tokens of each sample ([B, L, H], mask [B, L] True = real -> [B, H])."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class AttentionLayer(nn.Module):
    """One Transformer layer (post-norm, as Vaswani et al.): queries attend to keys/values (the same
    sequence for self-attention, the other modality for cross-attention), ignoring masked keys,
    then a feed-forward block; both residual."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(feedforward_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """queries [B, Lq, H] updated from keys [B, Lk, H] whose `key_mask` [B, Lk] is True."""
        attended, _ = self.attention(queries, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        out = self.norm1(queries + self.dropout1(attended))
        return self.norm2(out + self.dropout2(self.feedforward(out)))


class LBF(Compositor):
    """Grid cells as locally bounded entities (visual feature + box embedding), caption tokens as
    words, self-attention in each modality, cross-modal attention both ways, masked mean pooling of
    both attended sets, concatenated and projected to the CLIP space.

    Options: `hidden_dim` (512), `num_heads` (8), `num_layers` (2 self-attention layers per
    modality), `feedforward_dim` (1024), `dropout` (0.1)."""

    name = "lbf"
    uses_tokens = True

    def __init__(self, clip_feature_dim: int, hidden_dim: int = 512, num_heads: int = 8, num_layers: int = 2,
                 feedforward_dim: int = 1024, dropout: float = 0.1):
        super().__init__(clip_feature_dim, hidden_dim=hidden_dim, num_heads=num_heads, num_layers=num_layers,
                         feedforward_dim=feedforward_dim, dropout=dropout)
        if num_heads < 1 or hidden_dim % num_heads:
            raise CIRError(f"LBF: num_heads must divide hidden_dim {hidden_dim} (got {num_heads})")
        if num_layers < 0:
            raise CIRError(f"LBF: num_layers cannot be negative (got {num_layers})")

        def layer() -> AttentionLayer:
            return AttentionLayer(hidden_dim, num_heads, feedforward_dim, dropout)

        self.position = nn.Linear(BOX_FEATURES, clip_feature_dim)
        self.region = nn.Linear(clip_feature_dim, hidden_dim)
        self.word = nn.Linear(clip_feature_dim, hidden_dim)
        self.image_layers = nn.ModuleList(layer() for _ in range(num_layers))
        self.text_layers = nn.ModuleList(layer() for _ in range(num_layers))
        self.regions_to_words = layer()
        self.words_to_regions = layer()
        self.output = nn.Linear(2 * hidden_dim, clip_feature_dim)

    def entities(self, image: TokenFeatures) -> torch.Tensor:
        """c_i = Linear(avg(e_i, p_i)): each cell's feature averaged with its box embedding [B, L, H]."""
        batch, length, _ = image.tokens.shape
        if image.grid is None or image.grid[0] * image.grid[1] != length:
            raise CIRError(f"LBF needs the image's token grid: got grid {image.grid} for {length} tokens")
        boxes = grid_boxes(*image.grid, dtype=image.tokens.dtype).to(image.tokens.device)
        visual = image.tokens.masked_fill(~image.mask[..., None], 0)
        return self.region((visual + self.position(boxes)) / 2)

    def forward(self, image: TokenFeatures, text: TokenFeatures) -> torch.Tensor:
        """Normalised query features [B, D] from the reference's grid tokens and the caption's
        tokens; padded tokens (mask False) change nothing."""
        regions = self.entities(image)
        words = self.word(text.tokens.masked_fill(~text.mask[..., None], 0))
        for layer in self.image_layers:
            regions = layer(regions, regions, image.mask)
        for layer in self.text_layers:
            words = layer(words, words, text.mask)
        attended_regions = self.regions_to_words(regions, words, text.mask)
        attended_words = self.words_to_regions(words, regions, image.mask)
        joint = torch.cat((masked_mean(attended_regions, image.mask), masked_mean(attended_words, text.mask)), -1)
        return F.normalize(self.output(joint), dim=-1)
