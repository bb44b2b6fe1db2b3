"""Run under `python -m torch.distributed.run --standalone --nproc_per_node N`: extract the token
features of a folder's images and of some captions the way the training programs would
(EncodeOptions.for_accelerator), and write what this rank encoded (rank{R}.json), the token chunk
files it wrote (rank{R}_chunks.json: [entry folder, file name] pairs) and every row's tokens as
it gathers them (rank{R}_images.npy, rank{R}_captions.npy, rank{R}_mask.npy).

usage: sharded_tokens.py IMAGE_DIR CHECKPOINT OUT_DIR CHUNK_ROWS CAPTION...
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from clip_cir.encoding.extraction import FeatureCache, encode_counts
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.encoding.token_store import TokenCache, encode_image_tokens, encode_text_tokens
from clip_cir.models.clip import load_clip

images, checkpoint, out, chunk_rows = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
captions = sys.argv[5:]
written = []
save_piece = TokenCache.save_piece


def save_and_record(self, key, piece, *args):
    save_piece(self, key, piece, *args)
    path = self.tokens_path(key, piece)
    written.append([path.parent.name, path.name])


TokenCache.save_piece = save_and_record
accelerator = Accelerator(cpu=True)  # under torchrun: joins the other CPU processes over gloo
clip = load_clip(None, checkpoint)
options = EncodeOptions.for_accelerator(accelerator, clip.image_transform("targetpad", 1.25),
                                        FeatureCache(out / "cache"), batch_size=2, progress=False)
paths = sorted(images.glob("*.png"))
image_table = encode_image_tokens(clip, paths, options, "images", chunk_rows=chunk_rows)
text_table = encode_text_tokens(clip, captions, options, "captions", chunk_rows=chunk_rows)
rank = accelerator.process_index
(out / f"rank{rank}.json").write_text(json.dumps(dict(encode_counts)))
(out / f"rank{rank}_chunks.json").write_text(json.dumps(written))
everything = torch.arange(len(paths)).flip(0)  # every row, read back in reverse order
np.save(out / f"rank{rank}_images.npy", image_table.gather(everything)[0].numpy())
tokens, mask = text_table.gather(torch.arange(len(captions)))
np.save(out / f"rank{rank}_captions.npy", tokens.numpy())
np.save(out / f"rank{rank}_mask.npy", mask.numpy())
# Leave together, with the process group torn down: a rank that exits while gloo's threads still
# serve the other can abort ("terminate called without an active exception").
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
