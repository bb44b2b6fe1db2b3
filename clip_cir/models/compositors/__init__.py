"""The image-text compositors trained on frozen CLIP features in stage 2: the method's Combiner
and the related systems' TIRG, MAAF, CoSMo and LBF (docs/compositors.md)."""
