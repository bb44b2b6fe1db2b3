"""The pieces of `clip-cir zero-shot` on fixed inputs: the settings' checks, the batches of indices
and their draws, each method's step (its `forward` then `loss` equal its batch loss of
`training.zero_shot`, computed here from the same draws, and gradient accumulation gives the
one-piece gradient), and SEARLE's inversion cache in the run directory. Whole runs on the
synthetic world are in test_zero_shot_runs.py."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from clip_cir.config import TextualInversionConfig, ZeroShotConfig
from clip_cir.errors import CIRError
from clip_cir.models.pseudo_words import encode_with_pseudo_words
from clip_cir.models.zero_shot import PROMPT_TEMPLATES, mapping_for
from clip_cir.training import zero_shot_inversion
from clip_cir.training.accumulation import training_step
from clip_cir.training.textual_inversion import REGULARISER_TEMPLATES, textual_inversion
from clip_cir.training.zero_shot import PseudoWordText, lincir_batch_loss, pic2word_batch_loss
from clip_cir.training.zero_shot_data import IndexBatches
from clip_cir.training.zero_shot_inversion import invert_images
from clip_cir.training.zero_shot_losses import searle_phi_loss
from clip_cir.training.zero_shot_stage import MappingTraining, PseudoWordPrompts

TOL = dict(atol=1e-5, rtol=1e-5)
PLACEHOLDER_ID = 259
"""The tiny CLIP tokenizer's id of "$" (tests/training/test_zero_shot_objectives.py finds the same)."""


# ---- settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"method": "pic2word"}, "--method pic2word trains on images: give --gallery-dir PHOTOS, --image-list FILE or "
                             "--dataset/--data-root"),
    ({"method": "pic2word", "captions": "c.txt"}, "--method pic2word trains on images: give"),
    ({"method": "pic2word", "gallery_dir": "P", "captions": "c.txt"}, "pic2word trains on images alone: --captions"),
    ({"method": "searle", "gallery_dir": "P"}, "--method searle needs concept words: --concepts FILE"),
    ({"method": "lincir", "gallery_dir": "P"}, "--method lincir trains on captions alone: --gallery-dir is not read"),
    ({"method": "lincir", "image_list": "l.txt", "captions": "c.txt"}, "--image-list is not read"),
    ({"method": "lincir"}, "--method lincir trains on captions: give --captions FILE or --dataset/--data-root"),
    ({"method": "lincir", "dataset": "cirr"}, "--dataset and --data-root go together"),
    ({"gallery_dir": "P", "image_list": "l.txt"}, "--gallery-dir or --image-list, not both"),
    ({"gallery_dir": "P", "caption_column": "text"}, "--caption-column names a column of --captions FILE"),
    ({"gallery_dir": "P", "concepts": "w.txt"}, "--concepts is read by --method searle only, not by pic2word"),
    ({"method": "lincir", "captions": "c.txt", "phi_layers": 3}, "--phi-layers sizes Pic2Word's network"),
    ({"gallery_dir": "P", "phi_dropout": 1.0}, r"--phi-dropout must be in \[0, 1\), got 1.0"),
    ({"gallery_dir": "P", "phi_hidden_dim": 0}, "--phi-hidden-dim must be positive, got 0"),
    ({"gallery_dir": "P", "oti_steps": 0}, "--oti-steps must be positive, got 0"),
    ({"gallery_dir": "P", "oti_ema_decay": 1.0}, r"--oti-ema-decay must be in \[0, 1\)"),
])
def test_settings_that_name_no_data_for_the_method_or_data_it_does_not_read_are_one_line(options, message):
    with pytest.raises(CIRError, match=message):
        ZeroShotConfig.from_options(options).check()


def test_settings_defaults_and_what_they_accept():
    from clip_cir.training import textual_inversion as oti

    config = ZeroShotConfig()
    assert (config.method, config.training.lr, config.training.batch_size, config.training.weight_decay,
            config.training.epochs) == ("pic2word", 1e-4, 256, 0.01, 30)
    inversion = TextualInversionConfig()  # the helper functions' defaults, SEARLE's
    assert (inversion.oti_steps, inversion.oti_lr, inversion.oti_weight_decay, inversion.oti_ema_decay) == \
        (oti.OTI_STEPS, oti.OTI_LEARNING_RATE, oti.OTI_WEIGHT_DECAY, oti.OTI_EMA_DECAY)
    assert (inversion.oti_batch_size, inversion.oti_top_k) == (32, 15)
    ok = ZeroShotConfig.from_options({"method": "searle", "gallery_dir": "P", "concepts": "w.txt", "phi_dropout": 0.0})
    ok.check()
    assert ok.phi_options == {"dropout": 0.0} and ok.data_name == "images"
    assert ZeroShotConfig.from_options({"method": "lincir", "captions": "c.txt"}).data_name == "captions"
    with pytest.raises(CIRError, match="--method must be one of pic2word, searle, lincir, got 'clip'"):
        ZeroShotConfig.from_options({"method": "clip"})


# ---- batches ----------------------------------------------------------------------------------------------

def test_index_batches_are_a_seeded_permutation_sliced_per_process_with_their_draws():
    seed, epoch = 3, 2
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(10, generator=generator)
    concept = torch.randint(5, (10,), generator=generator)  # drawn after the permutation, in the same stream
    batches = IndexBatches(10, 4, seed, process_index=1, num_processes=2, draws={"concept": 5})
    batches.set_epoch(epoch)
    got = list(batches)
    assert len(batches) == 2 and len(got) == 2  # 10 // 4: the partial batch is dropped
    # Global batches are rows 0-3 and 4-7 of the permutation; process 1 of 2 takes the second half of each.
    assert got[0]["index"].tolist() == order[2:4].tolist() and got[1]["index"].tolist() == order[6:8].tolist()
    assert got[0]["concept"].tolist() == concept[2:4].tolist() and got[1]["concept"].tolist() == concept[6:8].tolist()
    one = IndexBatches(10, 4, seed)
    one.set_epoch(epoch)
    assert [b["index"].tolist() for b in one] == [order[:4].tolist(), order[4:8].tolist()]
    one.set_epoch(epoch + 1)
    assert next(iter(one))["index"].tolist() != order[:4].tolist()


# ---- one step of each method --------------------------------------------------------------------------------

FEATURES = torch.randn(6, 128, generator=torch.Generator().manual_seed(1))
CAPTIONS = ["A red car", "is on it", "a blue circle at the top", "make the square green", "two stars", "one dog"]


def _stage(clip, method: str, **extra) -> MappingTraining:
    """The stage as `from_setup` builds it, on given data; φ in eval mode (no dropout) to compare."""
    torch.manual_seed(0)
    mapping = mapping_for(method, clip).eval()
    text = PseudoWordText(clip)
    prepared = PseudoWordPrompts(mapping, clip.model, text.placeholder_id)
    optimizer = torch.optim.SGD(mapping.parameters(), lr=0.1)
    return MappingTraining(mapping, prepared, optimizer, IndexBatches(6, 2, 0), clip=clip, text=text, method=method,
                           template=PROMPT_TEMPLATES[method], identity={}, **extra)


def test_a_pic2word_step_is_its_batch_loss(frozen_clip):
    stage = _stage(frozen_clip, "pic2word", image_features=FEATURES)
    rows = torch.tensor([4, 0, 2])
    images, prompts = stage.forward({"index": rows})
    assert torch.equal(images, FEATURES[rows]) and prompts.shape == (3, 128)
    torch.testing.assert_close(stage.loss((images, prompts)),
                               pic2word_batch_loss(stage.text, stage.mapping, FEATURES[rows]), **TOL)


def test_a_lincir_step_is_its_batch_loss_with_the_noise_of_torchs_random_stream(frozen_clip):
    stage = _stage(frozen_clip, "lincir", captions=CAPTIONS)
    rows = torch.tensor([2, 5, 1])
    torch.manual_seed(7)
    got = stage.loss(stage.forward({"index": rows}))
    torch.manual_seed(7)  # lincir_batch_loss without a generator draws from the same stream
    expected = lincir_batch_loss(stage.text, stage.mapping, [CAPTIONS[i] for i in rows.tolist()])
    torch.testing.assert_close(got, expected, **TOL)


def test_a_searle_step_takes_the_batchs_concept_and_phrase_draws(frozen_clip):
    oti = torch.randn(6, 128, generator=torch.Generator().manual_seed(2))
    concepts = [["dog", "cat"], ["red car", "tree"], ["hat", "sun"], ["a", "b"], ["c", "d"], ["e", "f"]]
    stage = _stage(frozen_clip, "searle", image_features=FEATURES, oti_tokens=oti, concepts=concepts)
    batch = {"index": torch.tensor([1, 0]), "concept": torch.tensor([1, 0]), "phrase": torch.tensor([3, 5])}
    got = stage.loss(stage.forward(batch))
    # Image 1's concept 1 is "tree", image 0's concept 0 "dog"; phrases 3 and 5 of the stand-in templates.
    phrases = [" ".join(REGULARISER_TEMPLATES[3].format(" tree ").split()),
               " ".join(REGULARISER_TEMPLATES[5].format(" dog ").split())]
    pseudo_phrases = [" ".join(REGULARISER_TEMPLATES[3].format(" $ ").split()),
                      " ".join(REGULARISER_TEMPLATES[5].format(" $ ").split())]
    assert phrases[0] == "a photo of tree that someone took in the middle of a city"
    with torch.no_grad():
        predicted = stage.mapping(FEATURES[[1, 0]])
        model, tokenize = frozen_clip.model, frozen_clip.tokenizer
        expected = searle_phi_loss(oti[[1, 0]], predicted, model.encode_text(tokenize(phrases)),
                                   encode_with_pseudo_words(model, tokenize(pseudo_phrases), predicted, PLACEHOLDER_ID))
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("method", ["pic2word", "searle"])
def test_accumulated_steps_give_the_one_piece_gradient(frozen_clip, method):
    """`forward` returns per-example rows and `loss` takes the whole batch: with φ in eval mode
    (no dropout), 2 micro-batches give the gradient of the batch in one piece."""
    oti = torch.randn(6, 128, generator=torch.Generator().manual_seed(2))
    extra = {"image_features": FEATURES, "oti_tokens": oti, "concepts": [["dog", "cat"]] * 6} \
        if method == "searle" else {"image_features": FEATURES}
    batch = {"index": torch.tensor([5, 1, 3, 0]), "concept": torch.tensor([0, 1, 1, 0]),
             "phrase": torch.tensor([0, 1, 2, 3])}
    accelerator = Accelerator(cpu=True)
    gradients = []
    for pieces in (1, 2):
        stage = _stage(frozen_clip, method, **extra)
        training_step(accelerator, stage.model, stage.forward, stage.loss, batch, pieces)
        gradients.append([p.grad.clone() for p in stage.mapping.parameters()])
    for one, two in zip(*gradients):
        torch.testing.assert_close(one, two, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in gradients[0])


# ---- SEARLE's inversion cache ------------------------------------------------------------------------------

def test_inversion_tokens_are_each_batchs_own_inversion_kept_in_chunks(frozen_clip, tmp_path, monkeypatch):
    monkeypatch.setattr(zero_shot_inversion, "CHUNK_BATCHES", 2)  # chunks of 2 batches of 2 images
    settings = TextualInversionConfig(oti_steps=2, oti_batch_size=2)
    features = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    concepts = [["dog"], ["cat", "car"], ["tree"], ["sun", "hat"], ["red"]]
    seed = 4
    got = invert_images(frozen_clip, features, concepts, settings, seed, tmp_path, key="k1")
    expected = [textual_inversion(frozen_clip, features[2 * b:2 * b + 2], concepts[2 * b:2 * b + 2], steps=2,
                                  generator=torch.Generator().manual_seed(seed * 1_000_003 + b)) for b in range(3)]
    torch.testing.assert_close(got, torch.cat(expected), atol=0, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens_00000.safetensors", "tokens_00001.safetensors"]

    calls = []

    def counting(clip, images, *args, **kwargs):
        calls.append(len(images))
        return textual_inversion(clip, images, *args, **kwargs)

    monkeypatch.setattr(zero_shot_inversion, "textual_inversion", counting)
    assert torch.equal(invert_images(frozen_clip, features, concepts, settings, seed, tmp_path, key="k1"), got)
    assert calls == []  # every chunk read back
    (tmp_path / "tokens_00001.safetensors").unlink()
    assert torch.equal(invert_images(frozen_clip, features, concepts, settings, seed, tmp_path, key="k1"), got)
    assert calls == [1]  # only the missing chunk's one batch (of one image) again
    invert_images(frozen_clip, features, concepts, settings, seed, tmp_path, key="k2")
    assert calls == [1, 2, 2, 1]  # other settings: every batch again
