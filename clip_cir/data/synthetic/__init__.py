"""Deterministic synthetic "shapes world" data in the real CIRR, FashionIQ and CIRCO layouts
(`world`: scenes, edits, captions and rendering; `layouts`: the benchmark files)."""

from clip_cir.data.synthetic.layouts import generate

__all__ = ["generate"]
