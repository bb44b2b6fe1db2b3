"""Frozen-feature extraction under DDP: each rank encodes about half (whole feature cache chunks,
written by the rank that encoded them), and every rank ends with the same features one process
computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from helpers import REPO, ddp_launcher
from safetensors.torch import load_file


def test_two_processes_each_encode_and_write_their_own_chunks_and_get_every_feature(synth_root, tiny_checkpoint,
                                                                                   tmp_path):
    """16-row cache chunks: rank 0 takes the first half of the chunks, rank 1 the rest, each
    writes its own chunk files, and both end with every row."""
    from clip_cir.data import load_splits
    from clip_cir.encoding.split_features import EncodeOptions, split_features
    from clip_cir.models.clip import load_clip

    cmd = [sys.executable, *ddp_launcher(2), str(REPO / "tests" / "scripts" / "sharded_extract.py"),
           str(synth_root), str(tiny_checkpoint), str(tmp_path), "16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]

    clip = load_clip(None, str(tiny_checkpoint))
    split = load_splits("cirr", synth_root, "val")[0]
    one = split_features(clip, split, EncodeOptions(transform=clip.image_transform("targetpad", 1.25), progress=False))
    # 180 gallery images = 11 chunks of 16 and one of 4: rank 0 gets 6 chunks (rows 0-95), rank 1
    # the other 6 (96-179); 60 captions = 3 chunks of 16 and one of 12: rows 0-31 and 32-59.
    assert (len(split.gallery), len(split.queries)) == (180, 60)
    counts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(c["image"], c["text"]) for c in counts] == [(96, 32), (84, 28)]
    written = [json.loads((tmp_path / f"rank{r}_chunks.json").read_text()) for r in range(2)]
    images = [f"rows-{start:09d}-{min(start + 16, 180):09d}.safetensors" for start in range(0, 180, 16)]
    captions = [f"rows-{start:09d}-{min(start + 16, 60):09d}.safetensors" for start in range(0, 60, 16)]
    assert [[name for _, name in w] for w in written] == [images[:6] + captions[:2], images[6:] + captions[2:]]
    # Each entry folder holds exactly the chunks the two ranks wrote.
    on_disk = sorted([p.parent.name, p.name] for p in (tmp_path / "cache").glob("*/*"))
    assert on_disk == sorted(written[0] + written[1])
    for rank in range(2):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        torch.testing.assert_close(got["gallery"], one.gallery, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["text"], one.text, atol=1e-5, rtol=1e-5)
        # The second extraction read the chunks both ranks wrote: nobody encoded anything more.
        assert json.loads((tmp_path / f"rank{rank}_again.json").read_text()) == counts[rank]
    gallery_entry = next(folder for folder, name in written[1] if name == images[-1])
    assert torch.equal(load_file(str(tmp_path / "cache" / gallery_entry / images[-1]))["features"],
                       load_file(str(tmp_path / "rank0.safetensors"))["gallery"][176:])


def test_a_rank_that_fails_stops_every_rank_with_its_reason(data_copy, tiny_checkpoint, tmp_path):
    """An unreadable image in rank 1's share: rank 1 raises its one-line reason, rank 0 learns of it
    and stops too, instead of waiting in the gather until the collective times out."""
    from clip_cir.data import load_splits

    root = data_copy("cirr")
    last = list(load_splits("cirr", root, "val")[0].gallery.values())[-1]
    last.write_bytes(b"not an image")
    cmd = [sys.executable, *ddp_launcher(2), str(REPO / "tests" / "scripts" / "sharded_extract.py"),
           str(root), str(tiny_checkpoint), str(tmp_path / "out")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert last.name in result.stderr
    assert "another process failed while encoding its share" in result.stderr
