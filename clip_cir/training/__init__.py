"""The training program: one loop, its run directory, and the three stages it drives (pretraining, stage 1, stage 2)."""
