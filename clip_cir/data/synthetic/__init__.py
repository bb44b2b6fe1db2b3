"""Deterministic synthetic "shapes world" data in the real CIRR, FashionIQ and CIRCO layouts
(`world`: scenes, edits, captions and rendering; `layouts`: the benchmark files; `edits`: each
query's kind of edit, beside them), and small stand-ins of the classic benchmarks in theirs
(`classic`: the writers by benchmark, one module each)."""

from clip_cir.data.synthetic.classic import CLASSIC
from clip_cir.data.synthetic.edits import EDIT_KINDS, edit_kinds
from clip_cir.data.synthetic.layouts import generate

__all__ = ["CLASSIC", "EDIT_KINDS", "edit_kinds", "generate"]
