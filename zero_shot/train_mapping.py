"""Zero-shot mapping networks: `accelerate launch zero_shot/train_mapping.py --method pic2word --gallery-dir PHOTOS ...`
(or plain python). See `--help`; the work is done in `clip_cir.training.zero_shot_stage`.
"""

from clip_cir.apps.train import zero_shot_main as main

if __name__ == "__main__":
    main()
