"""The sigmoid loss against its formula written out pair by pair, with and without same-class positives, and
its global-batch form: shards' blocks add up to the whole, and two gloo processes give the single-process
loss and gradients."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from clip_helpers.training import distributed
from clip_helpers.training.gathering import distributed_siglip_loss
from clip_helpers.models import build_random_clip
from clip_helpers.siglip import SIGLIP_BIAS, SigmoidLoss, pair_signs, siglip_loss, use_siglip_temperature

LABELS = torch.tensor([0, 1, 2, 0, 1, 3])


def features(n=6, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=generator, dtype=torch.float64),
            torch.randn(n, dim, generator=generator, dtype=torch.float64))


def by_hand(image_features, text_features, t, b, labels=None):
    """-(1/n) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), one pair at a time in plain Python floats."""
    x = [[float(v) for v in row / row.norm()] for row in image_features]
    y = [[float(v) for v in row / row.norm()] for row in text_features]
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            positive = (i == j) if labels is None else (int(labels[i]) == int(labels[j]))
            z = 1.0 if positive else -1.0
            logit = t * sum(a * c for a, c in zip(x[i], y[j])) + b
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / len(x)


@pytest.mark.parametrize("labels", [None, LABELS])
@pytest.mark.parametrize("t, b", [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_is_the_formula_written_out(labels, t, b):
    image_features, text_features = features()
    found = siglip_loss(image_features, text_features, torch.tensor(t, dtype=torch.float64), b, labels)
    assert found.item() == pytest.approx(by_hand(image_features, text_features, t, b, labels), rel=1e-12)


def test_same_class_pairs_are_positives():
    signs = pair_signs(LABELS, 6, 6)
    assert signs[0, 3] == 1 and signs[3, 0] == 1 and signs[0, 1] == -1 and signs.diagonal().eq(1).all()
    image_features, text_features = features()
    assert siglip_loss(image_features, text_features, 10.0, -10.0, LABELS) != siglip_loss(
        image_features, text_features, 10.0, -10.0)


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="one label per pair"):
        pair_signs(LABELS[:4], 6, 6)
    with pytest.raises(ValueError, match="as many texts as images"):
        pair_signs(None, 6, 5)


def test_shards_blocks_add_up_to_the_global_batch():
    """The paper's chunked form: sum over (image shard, caption shard) blocks of the unnormalised loss."""
    image_features, text_features = features(n=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])
    t, b = torch.tensor(4.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    whole = siglip_loss(image_features, text_features, t, b, labels)
    shards = [slice(0, 4), slice(4, 8)]
    total = 0.0
    for rows in shards:
        for cols in shards:
            logits = t * F.normalize(image_features[rows]) @ F.normalize(text_features[cols]).T + b
            signs = (labels[rows, None] == labels[None, cols]).double() * 2 - 1
            total = total + -F.logsigmoid(signs * logits).sum()
    assert torch.allclose(whole, total / 8, rtol=1e-12)


def test_the_module_starts_where_the_paper_does_and_trains_its_bias():
    model, loss = build_random_clip("mini"), SigmoidLoss()
    use_siglip_temperature(model)
    assert model.logit_scale.exp().item() == pytest.approx(10.0) and loss.bias.item() == SIGLIP_BIAS
    image_features, text_features = features()
    value = loss(image_features.float(), text_features.float(), model.logit_scale.exp(), LABELS)
    value.backward()
    assert loss.bias.grad is not None and model.logit_scale.grad is not None
    with pytest.raises(ValueError, match="finite number > 0"):
        use_siglip_temperature(model, 0.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_shard(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image_features, text_features = features(n=8)
        part = slice(rank * 4, rank * 4 + 4)
        images = image_features[part].clone().requires_grad_(True)
        texts = text_features[part].clone().requires_grad_(True)
        t = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])[part]
        loss = distributed_siglip_loss(images, texts, t, b, labels)
        loss.backward()
        results[rank] = (loss.detach(), images.grad, texts.grad, t.grad, b.grad)
    finally:
        distributed.cleanup()


@pytest.mark.slow
def test_two_processes_give_the_single_process_loss_and_gradients():
    image_features, text_features = features(n=8)
    images, texts = image_features.clone().requires_grad_(True), text_features.clone().requires_grad_(True)
    t = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    loss = siglip_loss(images, texts, t, b, torch.tensor([0, 1, 2, 0, 1, 3, 0, 2]))
    loss.backward()
    results = mp.Manager().dict()
    mp.spawn(run_shard, args=(2, free_port(), results), nprocs=2)
    for rank in range(2):
        shard_loss, image_grad, text_grad, t_grad, b_grad = results[rank]
        part = slice(rank * 4, rank * 4 + 4)
        assert torch.allclose(shard_loss, loss.detach(), rtol=1e-12)
        # Each process's features get the sum over the 2 processes' (equal) losses: DDP's mean divides by 2.
        assert torch.allclose(image_grad / 2, images.grad[part], rtol=1e-10)
        assert torch.allclose(text_grad / 2, texts.grad[part], rtol=1e-10)
        assert torch.allclose(t_grad, t.grad, rtol=1e-10) and torch.allclose(b_grad, b.grad, rtol=1e-10)
