"""What token-level features cost on disk: bytes per image and per caption, and for a CIRR and a
FashionIQ training set, as the token cache stores them (float16, captions ragged).

    python benchmarks/token_bytes.py

Arithmetic from open_clip's model configs (no weights, no GPU, a second): an image is its grid of
cells (image size / patch size for a ViT, image size / 32 for a ModifiedResNet) times the
embedding dimension times 2 bytes, plus its 4-byte length; a caption is its tokens from the start
token through EOT times the dimension times 2, plus 4. Caption lengths are measured with the
model's tokenizer on the sample captions below (written to look like the datasets' own: CIRR's
average about 12 words; FashionIQ's are short, and training reads four forms per triplet); the
77-token column is the worst case, a caption padded to the context length as a dense cache
would store it. Per chunk file (1,024 rows) two 128-byte .npy headers come on top: negligible.

The token files are memory-mapped: what is resident in memory is the pages a run reads, held in
the page cache (shared by the processes of one machine, and given back under memory pressure).
An epoch that reads every row touches all of them, so give a training run about the disk size
in free page cache to avoid re-reading from disk; a run that reads a part touches that part.
"""

from __future__ import annotations

import argparse
import sys

import open_clip
from reporting import markdown_table

from clip_cir.data.fashioniq import training_captions

MODELS = (("RN50x4", "288 px"), ("ViT-B-16", "224 px"))
CIRR_TRAIN = (16_939, 28_225)
"""CIRR train: images and triplets (one caption each), docs/datasets.md."""
FASHIONIQ_TRAIN = (45_000, 18_000)
"""FashionIQ train, three categories: about 45k images (an assumption: the split files' count is
not in these docs) and 18,000 triplets, each read in four caption forms (72,000 captions)."""
CIRR_LIKE = [
    "the dog is lying on the grass instead of standing in the snow",
    "show two bottles of wine with a glass in front of them",
    "remove the people and make the bus red and seen from the side",
    "a black and white photo of a single penguin on the ice",
    "more monkeys sitting together on one branch and one is eating fruit",
    "the laptop is open and shows a blue screen on a desk",
    "zoom out to show the whole room with a bed and window",
    "change the cat to a kitten playing with a ball of yarn",
]
FASHIONIQ_LIKE = [("is shorter and has long sleeves", "is darker blue"),
                  ("has a graphic print on the front.", "is more casual"),
                  ("is red with white polka dots", "is strapless and longer"),
                  ("has no collar", "is a lighter shade of grey, with buttons")]


def mean_tokens(tokenizer, captions: list[str]) -> float:
    """Average tokens through EOT: the start token, the caption's BPE tokens, EOT."""
    return sum(len(tokenizer.encode(c)) + 2 for c in captions) / len(captions)


def grid_cells(vision: dict) -> tuple[int, int]:
    size = vision["image_size"]
    if isinstance(vision["layers"], (list, tuple)):  # ModifiedResNet: stride 32
        return size // 32, size // 32
    return size // vision["patch_size"], size // vision["patch_size"]


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    fashioniq = [form for c0, c1 in FASHIONIQ_LIKE for form in training_captions(c0, c1)]
    words = sum(len(c.split()) for c in CIRR_LIKE) / len(CIRR_LIKE)
    rows = []
    for name, resolution in MODELS:
        config = open_clip.get_model_config(name)
        rows_, cols = grid_cells(config["vision_cfg"])
        dim, context = config["embed_dim"], config["text_cfg"].get("context_length", 77)
        tokenizer = open_clip.get_tokenizer(name)
        per_image = rows_ * cols * dim * 2 + 4
        cirr_len, fiq_len = mean_tokens(tokenizer, CIRR_LIKE), mean_tokens(tokenizer, fashioniq)
        cirr_caption, fiq_caption = cirr_len * dim * 2 + 4, fiq_len * dim * 2 + 4
        cirr = CIRR_TRAIN[0] * per_image + CIRR_TRAIN[1] * cirr_caption
        fiq = FASHIONIQ_TRAIN[0] * per_image + 4 * FASHIONIQ_TRAIN[1] * fiq_caption
        rows.append([f"{name} {resolution}", f"{rows_} x {cols}, D {dim}", size(per_image),
                     f"{size(cirr_caption)} ({cirr_len:.1f} tokens)", f"{size(fiq_caption)} ({fiq_len:.1f} tokens)",
                     size(context * dim * 2 + 4), size(cirr), size(fiq)])
    print(f"Sample captions: CIRR-like {words:.1f} words on average ({len(CIRR_LIKE)} captions); FashionIQ-like: "
          f"the four training forms of {len(FASHIONIQ_LIKE)} caption pairs. CIRR train: {CIRR_TRAIN[0]:,} images + "
          f"{CIRR_TRAIN[1]:,} captions; FashionIQ train: ~{FASHIONIQ_TRAIN[0]:,} images + "
          f"{4 * FASHIONIQ_TRAIN[1]:,} caption forms.\n")
    print(markdown_table(["model", "grid, dim", "per image", "per CIRR caption", "per FashionIQ caption",
                          "per caption at 77 tokens", "CIRR train", "FashionIQ train"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
