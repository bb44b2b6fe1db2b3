"""The pieces of `clip-cir train-attributes` on fixed inputs: the batches, the learning rates of
the two networks' groups under a schedule, and what one step of each phase differentiates (the
embedders' loss (2); D's loss for D, G's weighted losses through a fixed D for G)."""

from __future__ import annotations

import copy
import math

import torch

from clip_cir.config import AttributesConfig
from clip_cir.models.flam import FLAM
from clip_cir.training.attributes_stage import FLAMObjective, FLAMTraining, IndexBatches
from clip_cir.training.flam import discriminator_loss, generator_losses, manipulation_classes
from clip_cir.training.flam_losses import FLAMLossWeights, embedding_loss, online_negatives
from clip_cir.training.optim import LRSchedule

WEIGHTS = FLAMLossWeights(adversarial=1.0, matching=0.5, cycle=2.0)


def test_batches_are_a_seeded_permutation_sliced_per_process():
    epochs = []
    single = IndexBatches(5, 2, seed=3, device=torch.device("cpu"), on_epoch=epochs.append)
    single.set_epoch(1)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1)).tolist()
    assert epochs == [1] and len(single) == 3
    assert [b.tolist() for b in single] == [order[0:2], order[2:4], order[4:5]]  # the partial batch kept
    ranks = [IndexBatches(5, 2, 3, torch.device("cpu"), epochs.append, rank, 2) for rank in (0, 1)]
    for batches in ranks:
        batches.set_epoch(1)
    assert len(ranks[0]) == 2  # under DDP the partial batch is dropped
    assert [b.tolist() for b in ranks[0]] == [[order[0]], [order[2]]]
    assert [b.tolist() for b in ranks[1]] == [[order[1]], [order[3]]]


def test_a_schedule_keeps_the_ratio_of_the_groups_learning_rates():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": [params[0]]}, {"params": [params[1]], "lr_scale": 0.2}], lr=1.0)
    lr = LRSchedule("cosine", base_lr=1.0, warmup=0, total_steps=4).apply(optimizer, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * 1 / 4))  # 0.8536
    assert math.isclose(lr, cosine)
    assert math.isclose(optimizer.param_groups[0]["lr"], cosine)
    assert math.isclose(optimizer.param_groups[1]["lr"], 0.2 * cosine)


def _objective() -> FLAMObjective:
    torch.manual_seed(0)
    flam = FLAM(6, (3, 2), embedding_dim=4, embedder_hidden=8, manipulator_hidden=8, discriminator_hidden=8)
    features = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.stack([torch.arange(12) % 3, (torch.arange(12) // 3) % 2], dim=1)
    labels[::4, 1] = -1
    return FLAMObjective(flam, features, labels, WEIGHTS, margin=0.2, online_sampling=True)


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_an_embedding_step_is_loss_2_summed_over_attributes_and_trains_only_the_embedders():
    objective = _objective()
    flam, rows = objective.flam, torch.tensor([0, 3, 4, 7, 9, 10])
    loss = objective(rows)
    x, y = objective.features[rows], objective.labels[rows]
    expected = (embedding_loss(flam.embedders[0](x), y[:, 0], flam.embedders[0].dictionary_vectors(), 0.2)
                + embedding_loss(flam.embedders[1](x), y[:, 1], flam.embedders[1].dictionary_vectors(), 0.2))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(g is not None for g in _grads(flam.embedders))
    assert all(g is None for g in _grads(flam.manipulators) + _grads(flam.discriminators))


def test_a_manipulation_step_gives_d_its_own_loss_and_g_its_loss_through_a_fixed_d():
    objective = _objective()
    flam = objective.flam
    objective.begin_manipulation(centroid_dictionary=True)
    rows = torch.arange(12)
    loss = objective(rows)
    loss.backward()
    assert all(g is None for g in _grads(flam.embedders))

    total = torch.zeros(())
    with torch.no_grad():
        embeddings = [e(objective.features) for e in flam.embedders]
    for a in range(2):
        classes = manipulation_classes(flam, embeddings, objective.labels, a)
        negatives = online_negatives([embeddings[1 - a]], classes)  # the other attribute's embeddings
        keep = negatives >= 0
        x, wanted = objective.features[keep], embeddings[a][negatives[keep]]
        kept = [e[keep] for e in embeddings]
        G, D = flam.manipulators[a], flam.discriminators[a]
        fake = G(x, wanted)
        loss_d = discriminator_loss(D, x, fake, kept, a, WEIGHTS, True)
        fixed = copy.deepcopy(D).requires_grad_(False)
        terms = generator_losses(G, fixed, x, fake, wanted, kept, a, True)
        loss_g = terms["adversarial"] + 0.5 * terms["matching"] + 2.0 * terms["cycle"]
        for got, want in zip(_grads(D), torch.autograd.grad(loss_d, list(D.parameters()), retain_graph=True)):
            assert torch.allclose(got, want, atol=1e-6)
        for got, want in zip(_grads(G), torch.autograd.grad(loss_g, list(G.parameters()))):
            assert torch.allclose(got, want, atol=1e-6)
        total = total + loss_d.detach() + loss_g.detach()
    assert torch.allclose(loss.detach(), total)


def test_the_manipulation_phase_begins_with_epoch_e_plus_1():
    objective = _objective()
    optimizer = torch.optim.Adam(objective.parameters())
    batches = IndexBatches(12, 4, 0, torch.device("cpu"), lambda epoch: None)
    stage = FLAMTraining(objective, objective, optimizer, batches, None, torch.zeros(0), None,
                         AttributesConfig(embedding_epochs=2))
    before = objective.flam.embedders[0].dictionary.detach().clone()
    batches.set_epoch(1)  # 0-based: the second epoch, still the embedders'
    assert objective.embeddings is None and torch.equal(objective.flam.embedders[0].dictionary, before)
    batches.set_epoch(2)
    assert objective.embeddings is not None and not torch.equal(objective.flam.embedders[0].dictionary, before)
    assert stage.objective is objective
