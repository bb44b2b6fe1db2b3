"""Stage 1: `accelerate launch stage1/finetune.py --dataset cirr --data-root DATA ...` (or plain python).

See `python stage1/finetune.py --help`; the program is `clip_cir.apps.train`, the work `clip_cir.training.stage1`.
"""

from clip_cir.apps.train import finetune_main as main

if __name__ == "__main__":
    main()
