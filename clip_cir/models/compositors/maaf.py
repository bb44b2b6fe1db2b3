"""MAAF (Dodds et al., "Modality-Agnostic Attention Fusion for visual search with text feedback",
2020) and CFQ's residual attention fusion (Dodds et al., "Training and challenging models for
text-guided fashion image retrieval", 2022) on frozen CLIP token features; code: yahoo/maaf
src/maaf/models/composition_models.py (MAAF) and src/maaf/models/clip.py (ClipMAAF, ClipResMAAF).

MAAF puts the image's spatial tokens and the caption's word tokens into one sequence, runs one
self-attention encoder over it, and average-pools the outputs: each image resolution on its own,
then the image and the caption halves (its "rwpool"). Here the image tokens are CLIP's grid
tokens followed by its global image feature (as ClipMAAF's layer-4 grid + attention-pool token),
the caption tokens CLIP's text tokens up to the end-of-text token (as ClipMAAF's text tokens).
What differs from MAAF and why is in docs/compositors.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import Compositor, TokenFeatures

MAAF_LAYERS = 1
MAAF_HEADS = 8
MAAF_FEEDFORWARD = 256
MAAF_DROPOUT = 0.1
"""yahoo/maaf's sizes for CLIP features (configs/clipresmaaf_fiq.yaml, experiment_scripts/extras/
clipmaaf.yaml: MAAF.NUM_BLOCKS 1, ATTENTION_HEADS 8, BLOCK_WIDTH 256; DROPOUT_RATE 0.1 in
config/defaults.py)."""
RAF_MAAF_WEIGHT = 1.0
"""CFQ's fixed weight of the attention output added to the CLIP sum: yahoo/maaf's default
(config/defaults.py MODEL.MAAF.RESIDUAL.INITIAL_MAAF_WEIGHT = 1., also set by its FashionIQ
ClipResMAAF experiment script; its fine-grained and iMaterialist configs use 0.01; ClipResMAAF
does not learn it)."""
MODALITY_EMBEDDING_STD = 0.02
"""Initial spread of the learned modality embeddings (BERT's token-type embedding init)."""


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `tokens` [B, L, W] over the positions where `mask` [B, L] is True."""
    kept = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
    return kept.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(tokens.dtype)


class MAAF(Compositor):
    """One transformer encoder over the reference image's CLIP tokens and the caption's CLIP
    tokens together; the query is the average of the pooled outputs, mapped into CLIP's space.
    With `residual`, CFQ's residual attention fusion: that output is added, times a fixed
    `residual_weight`, to the sum of CLIP's global image and caption features."""

    name = "maaf"
    uses_tokens = True

    def __init__(self, clip_feature_dim: int, width: int | None = None, num_layers: int = MAAF_LAYERS,
                 num_heads: int = MAAF_HEADS, feedforward_dim: int = MAAF_FEEDFORWARD, dropout: float = MAAF_DROPOUT,
                 modality_embeddings: bool = True, residual: bool = False, residual_weight: float = RAF_MAAF_WEIGHT):
        model_width = clip_feature_dim if width is None else width
        if min(clip_feature_dim, model_width, num_layers, num_heads, feedforward_dim) < 1:
            raise CIRError(f"MAAF sizes must be positive (CLIP dimension {clip_feature_dim}, width {model_width}, "
                           f"{num_layers} layers, {num_heads} heads, feed-forward {feedforward_dim})")
        if model_width % num_heads:
            raise CIRError(f"MAAF width {model_width} is not divisible by its {num_heads} attention heads")
        if not 0.0 <= dropout < 1.0:
            raise CIRError(f"MAAF dropout must be in [0, 1), got {dropout}")
        super().__init__(clip_feature_dim, width=width, num_layers=num_layers, num_heads=num_heads,
                         feedforward_dim=feedforward_dim, dropout=dropout, modality_embeddings=modality_embeddings,
                         residual=residual, residual_weight=residual_weight)
        self.width, self.residual, self.residual_weight = model_width, residual, float(residual_weight)
        projected = model_width != clip_feature_dim
        # MAAF projects each modality into the model width on its own (image: 1x1 conv; text: its encoder).
        self.image_projection = nn.Linear(clip_feature_dim, model_width) if projected else nn.Identity()
        self.text_projection = nn.Linear(clip_feature_dim, model_width) if projected else nn.Identity()
        # Row 0 is added to every image token, row 1 to every caption token.
        self.modality_embedding = (nn.Parameter(torch.randn(2, model_width) * MODALITY_EMBEDDING_STD)
                                   if modality_embeddings else None)
        # MAAF's encoder (The Annotated Transformer's): pre-norm layers, ReLU feed-forward, dropout on
        # the attention weights and on each sublayer's output, a final LayerNorm; no positional encoding.
        layer = nn.TransformerEncoderLayer(model_width, num_heads, feedforward_dim, dropout, activation="relu",
                                           layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(model_width, eps=1e-6),
                                             enable_nested_tensor=False)
        self._glorot_init()
        self.output_projection = nn.Linear(model_width, clip_feature_dim)

    def _glorot_init(self) -> None:
        """MAAF initialises every matrix of its encoder with Glorot-uniform, the query, key and
        value projections each as its own matrix (torch keeps them stacked in one)."""
        with torch.no_grad():
            for name, parameter in self.encoder.named_parameters():
                if parameter.dim() < 2:
                    continue
                blocks = parameter.chunk(3) if name.endswith("in_proj_weight") else (parameter,)
                for block in blocks:
                    nn.init.xavier_uniform_(block)

    def fused(self, image: TokenFeatures, text: TokenFeatures) -> torch.Tensor:
        """MAAF's pooled encoder output [B, width], before the map into CLIP's space."""
        image_tokens = torch.cat((image.tokens, image.pooled.unsqueeze(1)), dim=1)
        image_mask = torch.cat((image.mask, image.mask.new_ones(len(image), 1)), dim=1)
        image_in = self.image_projection(image_tokens)
        # Padding is zeroed as well as masked, so no value it holds (not even inf or NaN) can leak.
        text_in = self.text_projection(text.tokens).masked_fill(~text.mask.unsqueeze(-1), 0.0)
        if self.modality_embedding is not None:
            image_in = image_in + self.modality_embedding[0]
            text_in = text_in + self.modality_embedding[1]
        mask = torch.cat((image_mask, text.mask), dim=1)
        out = self.encoder(torch.cat((image_in, text_in), dim=1), src_key_padding_mask=~mask)
        grid_count = image.tokens.shape[1]
        grid_out, global_out, text_out = out[:, :grid_count], out[:, grid_count], out[:, grid_count + 1:]
        # Resolution-wise pooling: the grid's mean and the global token count equally.
        image_pooled = (masked_mean(grid_out, image.mask) + global_out) / 2
        return (image_pooled + masked_mean(text_out, text.mask)) / 2

    def forward(self, image: TokenFeatures, text: TokenFeatures) -> torch.Tensor:
        """Normalised query features [B, D] from the reference image's and the caption's CLIP tokens."""
        if image.tokens.shape[-1] != self.clip_feature_dim or text.tokens.shape[-1] != self.clip_feature_dim:
            raise CIRError(f"MAAF expects {self.clip_feature_dim}-d CLIP token features, got image "
                           f"{image.tokens.shape[-1]}-d and caption {text.tokens.shape[-1]}-d")
        attended = self.output_projection(self.fused(image, text))
        if self.residual:
            attended = image.pooled + text.pooled + self.residual_weight * attended
        return F.normalize(attended, dim=-1)
