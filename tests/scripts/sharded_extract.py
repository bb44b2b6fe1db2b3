"""Run under `python -m torch.distributed.run --standalone --nproc_per_node N`: extract a split's
frozen features the way the training programs do (EncodeOptions.for_accelerator), and write what this rank encoded
and which feature cache chunks it wrote (rank{R}_chunks.json: [entry folder, file name] pairs).

usage: sharded_extract.py DATA_ROOT CHECKPOINT OUT_DIR [CHUNK_ROWS]
"""

import json
import sys
from pathlib import Path

import torch.distributed
from accelerate import Accelerator
from safetensors.torch import save_file

from clip_cir.data import load_splits
from clip_cir.encoding.extraction import FeatureCache, encode_counts
from clip_cir.encoding.split_features import EncodeOptions, split_features
from clip_cir.models.clip import load_clip

data_root, checkpoint, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
cache = FeatureCache(out / "cache", *map(int, sys.argv[4:5]))
written = []
save_piece = FeatureCache.save_piece


def save_and_record(self, key, piece, features):
    save_piece(self, key, piece, features)
    path = self.piece_path(key, piece)
    written.append([path.parent.name, path.name])


FeatureCache.save_piece = save_and_record
accelerator = Accelerator(cpu=True)  # under torchrun: joins the other CPU processes over gloo
clip = load_clip(None, checkpoint)
split = load_splits("cirr", data_root, "val")[0]
encode = EncodeOptions.for_accelerator(accelerator, clip.image_transform("targetpad", 1.25),
                                       cache, progress=False)
features = split_features(clip, split, encode)
rank = accelerator.process_index
save_file({"gallery": features.gallery.contiguous(), "text": features.text.contiguous()},
          str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps(dict(encode_counts)))
(out / f"rank{rank}_chunks.json").write_text(json.dumps(written))
accelerator.wait_for_everyone()
again = split_features(clip, split, encode)  # now from the cache, on every rank
(out / f"rank{rank}_again.json").write_text(json.dumps(dict(encode_counts)))
# Leave together, with the process group torn down: a rank that exits while gloo's threads still
# serve the other can abort ("terminate called without an active exception").
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
