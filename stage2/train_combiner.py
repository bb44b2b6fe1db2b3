"""Stage 2: `accelerate launch stage2/train_combiner.py --dataset cirr --data-root DATA --pretrained STAGE1_RUN ...`
(or plain python). See `--help`; the work is done in `clip_cir.training.stage2`.
"""

from clip_cir.apps.train import train_combiner_main as main

if __name__ == "__main__":
    main()
