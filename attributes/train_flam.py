"""Attribute manipulation: `accelerate launch attributes/train_flam.py --catalogue DIR --pretrained CLIP ...`
(or plain python). See `--help`; the work is done in `clip_cir.training.attributes_stage`.
"""

from clip_cir.apps.train import train_attributes_main as main

if __name__ == "__main__":
    main()
