"""The sigmoid loss against its formula written out pair by pair, with and without same-class positives, and
its global-batch form: shards' blocks add up to the whole, and two gloo processes give the single-process
loss and gradients. A SigLIP run's validation loss is that formula too, with its learned bias, and no floor."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.training import distributed, evaluation, loop
from clip_helpers.training.batches import train_loader_for
from clip_helpers.training.config import RunFolder, TrainConfig
from clip_helpers.zeroshot import build_classifier
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


def validation_by_hand(model, data, classifier, t, b, batch_size):
    """The mean over images of by_hand's loss, batch by batch: the validation loss of a SigLIP run."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images, labels = data[start:start + batch_size]
            image_features = model.encode_image(images).double()
            total += by_hand(image_features, classifier[labels].double(), t, b, labels) * len(labels)
    return total / len(data)


def test_validation_scores_give_the_sigmoid_loss_with_the_learned_bias():
    model, loss = build_random_clip("mini", seed=1), SigmoidLoss(bias=-3.0)
    use_siglip_temperature(model, 7.0)
    generator = torch.Generator().manual_seed(4)
    data = TensorDataset(torch.randn(10, 3, 32, 32, generator=generator), torch.tensor([0, 0, 1, 2, 1, 3, 3, 3, 0, 2]))
    classifier = F.normalize(torch.randn(4, model.visual.output_dim, generator=generator), dim=-1)
    loader = DataLoader(data, batch_size=4)
    scores = evaluation.validation_scores(model, loader, classifier, amp=None, sigmoid_loss=loss)
    expected = validation_by_hand(model, data, classifier, 7.0, -3.0, 4)
    assert scores["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(scores["val_loss_floor"])  # the duplicate-caption floor bounds the softmax loss only
    clip_scores = evaluation.validation_scores(model, loader, classifier, amp=None)
    assert clip_scores["val_loss"] != pytest.approx(expected, rel=1e-2) and clip_scores["val_loss_floor"] > 0
    assert clip_scores["val_top1"] == scores["val_top1"]  # only the loss changes


def test_a_siglip_run_validates_with_its_own_loss_and_saves_its_missing_floors(tmp_path):
    names, templates = ["red circle", "blue square", "green star", "yellow heart"], ["a {}."]
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                         torch.tensor([0, 1, 2, 0, 1, 3, 0, 2]))
    model = build_random_clip("mini-vit", seed=0)
    config = TrainConfig(class_names=names, templates=templates, num_epochs=1, lr=1e-3, amp=None, progress=False,
                         loss="siglip")
    history = loop.fine_tune(model, train_loader_for(data, 8), DataLoader(data, batch_size=4), config,
                             RunFolder(str(tmp_path / "run")))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # NaN floors do not block the save
    bias, t = saved["loss"]["bias"].item(), model.logit_scale.exp().item()
    assert bias != SIGLIP_BIAS
    expected = validation_by_hand(model.eval(), data, build_classifier(model, names, templates), t, bias, 4)
    assert history["val_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert history[["train_loss_floor", "val_loss_floor"]].isna().all(axis=None)


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
