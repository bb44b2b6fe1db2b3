"""Captions with a pseudo-word: for every text tower family the feature equals open_clip's own run
of the tower with the placeholder's input embedding swapped (written out step by step for the
ViT-style CLIP; for the others, open_clip's `encode_text` with the embedding module's output
swapped by a hook), the placeholder's real embedding gives exactly `encode_text`, trimmed ids
give the untrimmed feature, the function compiles into one graph, and what cannot work is
refused in one line.

Tolerance: float32 on a CPU, atol = rtol = 1e-5 where the shapes of the products differ; exact
where the same operations run on the same shapes."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from clip_cir.errors import CIRError
from clip_cir.models.pseudo_words import (
    count_placeholders,
    encode_with_pseudo_words,
    placeholder_token_id,
    require_pseudo_words,
    token_embedding_dim,
    token_embedding_table,
)
from clip_cir.models.towers import encode_text, trim_tokens

TOL = dict(atol=1e-5, rtol=1e-5)
PROMPTS = ["a photo of $ that is red", "$ with a small blue triangle on the left", "a big $ , green circle"]


def _tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=32)


def _pseudo(rows: int, width: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


def _swapped_run(model: torch.nn.Module, embedding: torch.nn.Module, ids: torch.Tensor, pseudo: torch.Tensor,
                 placeholder: int) -> torch.Tensor:
    """open_clip's own `encode_text(ids)`, the embedding module's output at each placeholder
    position of row b replaced by pseudo[b] (one position at a time)."""
    def swap(_module, _inputs, output):
        output = output.clone()
        for row in range(ids.shape[0]):
            for position in range(ids.shape[1]):
                if int(ids[row, position]) == placeholder:
                    output[row, position] = pseudo[row]
        return output

    handle = embedding.register_forward_hook(swap)
    try:
        return model.encode_text(ids)
    finally:
        handle.remove()


def test_the_placeholder_is_one_token_of_the_tokenizer():
    tokenizer = _tokenizer()
    assert placeholder_token_id(tokenizer) == tokenizer.encoder["$</w>"] == 259
    assert placeholder_token_id(tokenizer, "*") == tokenizer.encoder["*</w>"]
    ids = tokenizer(PROMPTS + ["a photo of $, red", "no placeholder"])
    assert count_placeholders(ids, 259).tolist() == [1, 1, 1, 0, 0]  # "$," is one word to CLIP's tokenizer
    with pytest.raises(CIRError, match=r"^placeholder 'qzxqzxwv' is not one token of this tokenizer \(choose"):
        placeholder_token_id(tokenizer, "qzxqzxwv")

    class UnknownWords:
        """A tokenizer that reads every unknown word as its unknown token 3 (as Hugging Face ones do)."""
        tokenizer = type("HF", (), {"unk_token_id": 3})()

        def __call__(self, texts):
            rows = {"a": [0, 5, 2, 1, 1], "a $": [0, 5, 3, 2, 1], "a b": [0, 5, 6, 2, 1], "a c": [0, 5, 2, 2, 1]}
            return torch.tensor([rows[t] for t in texts])

    assert placeholder_token_id(UnknownWords(), "b") == 6
    with pytest.raises(CIRError, match=r"^placeholder '\$' is not one token"):
        placeholder_token_id(UnknownWords(), "$")  # one token, but the unknown one
    with pytest.raises(CIRError, match=r"^placeholder 'c' is not one token"):
        placeholder_token_id(UnknownWords(), "c")  # the id it inserts is a special one the prompt already has


@torch.no_grad()
def test_vit_style_clip_equals_the_text_tower_run_step_by_step(tiny_clip):
    model, ids = tiny_clip, _tokenizer()(PROMPTS)
    pseudo = _pseudo(3, 128)
    got = encode_with_pseudo_words(model, ids, pseudo, 259)
    assert isinstance(model, CLIP) and model.text_pool_type == "argmax" and token_embedding_dim(model) == 128

    x = model.token_embedding(ids)  # [3, 32, 128]
    positions = (ids == 259).nonzero().tolist()
    assert [row for row, _ in positions] == [0, 1, 2]  # one placeholder a row, at 4, 1 and 3
    for row, position in positions:
        x[row, position] = pseudo[row]
    x = x + model.positional_embedding
    for block in model.transformer.resblocks:
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    eot = [int(row.argmax()) for row in ids]  # the end-of-text token, the largest id
    by_hand = torch.stack([x[row, eot[row]] for row in range(3)]) @ model.text_projection

    torch.testing.assert_close(got, by_hand, **TOL)
    torch.testing.assert_close(got, _swapped_run(model, model.token_embedding, ids, pseudo, 259), **TOL)
    assert not torch.allclose(got, model.encode_text(ids), atol=1e-2)  # the pseudo-word changed the feature


@torch.no_grad()
def test_the_placeholders_real_embedding_gives_encode_text_exactly(tiny_clip):
    ids = _tokenizer()(PROMPTS)
    real = token_embedding_table(tiny_clip)[259].expand(3, -1)
    assert torch.equal(encode_with_pseudo_words(tiny_clip, ids, real, 259), tiny_clip.encode_text(ids))


@torch.no_grad()
def test_trimmed_token_ids_give_the_untrimmed_features(tiny_clip):
    ids = _tokenizer()(PROMPTS)
    trimmed = trim_tokens(tiny_clip, ids)
    assert trimmed.shape == (3, 11) and torch.equal(trimmed, ids[:, :11])
    pseudo = _pseudo(3, 128)
    full = encode_with_pseudo_words(tiny_clip, ids, pseudo, 259)
    torch.testing.assert_close(encode_with_pseudo_words(tiny_clip, trimmed, pseudo, 259), full, **TOL)
    real = tiny_clip.token_embedding.weight[259].expand(3, -1)
    torch.testing.assert_close(encode_with_pseudo_words(tiny_clip, trimmed, real, 259), encode_text(tiny_clip, ids),
                               **TOL)


def _text_cfg(**options) -> dict:
    return dict(context_length=12, vocab_size=300, width=32, heads=2, layers=2, **options)


VISION = dict(image_size=32, patch_size=16, width=32, head_width=16, layers=1)
TOWERS = {
    "clip-eos": lambda: CLIP(32, VISION, _text_cfg(pool_type="eos", eos_id=7)),
    "text-transformer-argmax": lambda: CustomTextCLIP(32, VISION, _text_cfg()),
    "text-transformer-last-bidirectional": lambda: CustomTextCLIP(32, VISION, _text_cfg(
        no_causal_mask=True, pool_type="last", proj_bias=True)),
    "text-transformer-first": lambda: CustomTextCLIP(32, VISION, _text_cfg(no_causal_mask=True, pool_type="first")),
    "text-transformer-class-token": lambda: CustomTextCLIP(32, VISION, _text_cfg(embed_cls=True)),
}
IDS = torch.tensor([[1, 40, 9, 60, 7, 299, 0, 0, 0, 0, 0, 0],  # eos 7, end of text 299 (the largest id)
                    [1, 9, 9, 41, 42, 7, 299, 0, 0, 0, 0, 0],
                    [1, 55, 56, 7, 299, 0, 0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("name", list(TOWERS))
@torch.no_grad()
def test_every_open_clip_text_tower_equals_its_own_run_with_the_embedding_swapped(name):
    torch.manual_seed(0)
    model = TOWERS[name]().eval()
    embedding = model.token_embedding if isinstance(model, CLIP) else model.text.token_embedding
    pseudo = _pseudo(3, 32)
    got = encode_with_pseudo_words(model, IDS, pseudo, 9)  # row 1 holds the placeholder twice
    torch.testing.assert_close(got, _swapped_run(model, embedding, IDS, pseudo, 9), **TOL)
    assert torch.equal(encode_with_pseudo_words(model, IDS, embedding.weight[9].expand(3, -1), 9),
                       model.encode_text(IDS))
    assert not torch.allclose(got[:2], model.encode_text(IDS)[:2], atol=1e-3)


@torch.no_grad()
def test_a_text_transformer_with_a_padding_mask_equals_its_own_run():
    torch.manual_seed(0)
    model = CustomTextCLIP(32, VISION, _text_cfg(no_causal_mask=True, pool_type="first")).eval()
    model.text.use_pad_mask = True  # what a bidirectional tower built with use_pad_mask has
    pseudo = _pseudo(3, 32)
    got = encode_with_pseudo_words(model, IDS, pseudo, 40)
    torch.testing.assert_close(got, _swapped_run(model, model.text.token_embedding, IDS, pseudo, 40), **TOL)
    model.text.use_pad_mask = False
    assert not torch.allclose(encode_with_pseudo_words(model, IDS, pseudo, 40), got, atol=1e-4)  # the mask mattered


@torch.no_grad()
def test_hugging_face_tower_equals_its_own_run_at_every_position(hf_standins):
    from clip_cir.models.clip import load_clip

    clip = load_clip("cir-tiny-hftext")
    model, text = clip.model.eval(), clip.model.text
    with pytest.raises(CIRError, match=r"^placeholder '\$' is not one token of this tokenizer"):
        placeholder_token_id(clip.tokenizer)
    placeholder = placeholder_token_id(clip.tokenizer, "triangle")
    ids = clip.tokenizer(["a small triangle", "is red", "has a big blue triangle on the left"])
    assert count_placeholders(ids, placeholder).tolist() == [1, 0, 1]
    assert (ids == text.config.pad_token_id).any(dim=1).all()  # every row padded: positions matter there
    pseudo = _pseudo(3, token_embedding_dim(model))
    assert token_embedding_dim(model) == 32

    hidden = []
    handle = text.transformer.register_forward_hook(lambda _m, _i, out: hidden.append(out.last_hidden_state))
    try:
        got = encode_with_pseudo_words(model, ids, pseudo, placeholder)
        expected = _swapped_run(model, text.transformer.get_input_embeddings(), ids, pseudo, placeholder)
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(hidden[0], hidden[1], **TOL)  # every position, padding included
    real = text.transformer.get_input_embeddings().weight[placeholder].expand(3, -1)
    torch.testing.assert_close(encode_with_pseudo_words(model, ids, real, placeholder), model.encode_text(ids), **TOL)
    torch.testing.assert_close(got[1], model.encode_text(ids)[1], **TOL)  # no placeholder: the caption itself


def test_towers_that_cannot_take_a_pseudo_word_are_refused_in_one_line():
    torch.manual_seed(0)
    model = CustomTextCLIP(32, VISION, _text_cfg(pool_type="none"))
    with pytest.raises(CIRError, match=r"^pseudo-words are not available for text towers pooling 'none': the tower"):
        encode_with_pseudo_words(model, IDS, _pseudo(3, 32), 9)
    model.text = torch.nn.Linear(2, 2)
    with pytest.raises(CIRError, match=r"^pseudo-words are not available for Linear text towers \(open_clip's CLIP"):
        token_embedding_dim(model)

    class NoEmbedsModel(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    model.text = type("HFTextEncoder", (torch.nn.Module,), {})()
    model.text.transformer = NoEmbedsModel()
    with pytest.raises(CIRError, match=r"^pseudo-words are not available for Hugging Face text towers of type "
                                       r"NoEmbedsModel: its forward takes no inputs_embeds$"):
        require_pseudo_words(model)


def test_one_pseudo_word_per_caption(tiny_clip):
    with pytest.raises(CIRError, match=r"^pseudo-words must be one vector per caption: got \(2, 128\) for 3 captions$"):
        encode_with_pseudo_words(tiny_clip, _tokenizer()(PROMPTS), _pseudo(2, 128), 259)


def test_compiles_into_one_graph_whatever_the_placeholders_positions(tiny_clip):
    """fullgraph=True fails on any graph break; a second batch with the placeholders elsewhere and
    other vectors reuses the graph (no per-sample Python control flow)."""
    graphs = []

    def backend(graph_module, _inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(encode_with_pseudo_words, backend=backend, fullgraph=True)
    tokenizer = _tokenizer()
    with torch.no_grad():
        for prompts, seed in ((PROMPTS, 1), (["$ is red", "a b c d e $", "a $ , b"], 2)):
            ids, pseudo = tokenizer(prompts), _pseudo(3, 128, seed)
            torch.testing.assert_close(compiled(tiny_clip, ids, pseudo, 259),
                                       encode_with_pseudo_words(tiny_clip, ids, pseudo, 259), **TOL)
    assert len(graphs) == 1
