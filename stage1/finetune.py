"""Stage 1: `accelerate launch stage1/finetune.py --dataset cirr --data-root DATA ...` (or plain python).

See `python stage1/finetune.py --help`; the work is done in `clip_cir.training.stage1`.
"""

from clip_cir.training.stage1 import main

if __name__ == "__main__":
    main()
