import math

import pytest
import torch
import torch.nn.functional as F

from clip_helpers.losses import clip_loss


def reference_loss(image_features, text_features, logit_scale, labels=None):
    """The paper's pseudocode written out with explicit sums, one row at a time."""
    image_features = image_features / image_features.norm(dim=1, keepdim=True)
    text_features = text_features / text_features.norm(dim=1, keepdim=True)
    logits = logit_scale * image_features @ text_features.T
    n = len(logits)
    labels = list(range(n)) if labels is None else [int(label) for label in labels]

    def cross_entropy(rows):
        total = 0.0
        for i in range(n):
            log_z = math.log(sum(math.exp(rows[i][j]) for j in range(n)))
            positives = [j for j in range(n) if labels[j] == labels[i]]
            total += sum(-(rows[i][j] - log_z) / len(positives) for j in positives)
        return total / n

    rows = logits.tolist()
    columns = logits.T.tolist()
    return (cross_entropy(rows) + cross_entropy(columns)) / 2


def test_matches_hand_written_reference(generator):
    image_features = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    text_features = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    loss = clip_loss(image_features, text_features, logit_scale=torch.tensor(7.0, dtype=torch.float64))
    assert loss.dim() == 0
    assert math.isclose(loss.item(), reference_loss(image_features, text_features, 7.0), rel_tol=1e-9)


def test_multi_positive_matches_reference(generator):
    image_features = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    text_features = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    loss = clip_loss(image_features, text_features, 5.0, labels=labels)
    assert math.isclose(loss.item(), reference_loss(image_features, text_features, 5.0, labels), rel_tol=1e-9)


def test_distinct_labels_equal_plain_loss(generator):
    image_features, text_features = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    torch.testing.assert_close(clip_loss(image_features, text_features, 10.0, labels=torch.arange(5)),
                               clip_loss(image_features, text_features, 10.0))


def test_plain_loss_equals_torch_cross_entropy(generator):
    image_features, text_features = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    logits = 3.0 * F.normalize(image_features) @ F.normalize(text_features).T
    targets = torch.arange(5)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(clip_loss(image_features, text_features, 3.0), expected)


def test_aligned_features_at_high_scale_give_near_zero(generator):
    features = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0][:8]  # orthonormal rows
    assert clip_loss(features, 2.5 * features, logit_scale=100.0).item() < 1e-6
    # Shuffled pairs are the opposite: the loss is large.
    assert clip_loss(features, features.roll(1, dims=0), logit_scale=100.0).item() > 50


def test_identical_captions_give_the_same_loss_either_way(generator):
    """Exact duplicate captions have identical features, so no loss can prefer one over the other."""
    image_features = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 1, 0])
    text_features = torch.randn(3, 8, generator=generator, dtype=torch.float64)[labels]
    torch.testing.assert_close(clip_loss(image_features, text_features, 20.0, labels=labels),
                               clip_loss(image_features, text_features, 20.0))


def test_plain_loss_wants_same_class_pairs_apart_multi_positive_does_not(generator):
    """Two dog photos captioned with different templates ("a photo of a dog.", "a blurry photo of a dog.").

    collapsed: both dogs and both captions at one point (the model knows "dog").
    separated: each dog photo matched only to its own caption (memorising which template went where).
    """
    d = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0]
    labels = torch.tensor([0, 0, 1, 2])
    collapsed = torch.stack([d[0], d[0], d[1], d[2]])
    separated = torch.stack([d[0] + 0.5 * d[3], d[0] - 0.5 * d[3], d[1], d[2]])
    plain = {name: clip_loss(f, f, 100.0).item() for name, f in [("collapsed", collapsed), ("separated", separated)]}
    multi = {name: clip_loss(f, f, 100.0, labels=labels).item()
             for name, f in [("collapsed", collapsed), ("separated", separated)]}
    assert plain["separated"] < plain["collapsed"]   # false negatives reward telling two dogs apart
    assert multi["collapsed"] < multi["separated"]   # multi-positive targets reward knowing "dog"
    assert math.isclose(multi["collapsed"], 2 * math.log(2) / 4, rel_tol=1e-4)  # floor: log 2 on dog rows


def test_gradient_reaches_logit_scale(generator):
    image_features = torch.randn(4, 8, generator=generator, requires_grad=True)
    text_features = torch.randn(4, 8, generator=generator, requires_grad=True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    clip_loss(image_features, text_features, log_scale.exp(), labels=torch.tensor([0, 1, 1, 2])).backward()
    assert log_scale.grad is not None and log_scale.grad.abs().item() > 0
    assert image_features.grad.abs().sum() > 0 and text_features.grad.abs().sum() > 0


# ---------------------------------------------------------------- the loss against the batch size

def test_distinct_class_batches_hold_each_class_once():
    import numpy as np
    from clip_helpers.losses import distinct_class_batch
    labels = np.repeat(np.arange(6), 4)
    rng = np.random.default_rng(0)
    for size in (1, 3, 6):
        batch = distinct_class_batch(labels, size, rng)
        assert len(batch) == size and len(set(labels[batch.numpy()].tolist())) == size


def test_loss_by_batch_size_is_clip_loss_of_its_batches():
    import numpy as np
    from clip_helpers.losses import loss_by_batch_size, loss_floor
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)  # 12 images of 4 classes
    image_features, captions = torch.randn(12, 8, generator=generator), torch.randn(4, 8, generator=generator)
    sweep = loss_by_batch_size(image_features, labels, captions, 10.0, batch_sizes=(2, 4, 8, 16), n_batches=5, seed=1)
    assert sweep.index.tolist() == [2, 4, 8]  # 16 is more than the pool holds
    assert sweep["chance: log(batch size)"].tolist() == [math.log(2), math.log(4), math.log(8)]
    assert math.isnan(sweep.loc[8, "distinct classes (no duplicate captions)"])  # 8 > 4 classes
    # the same draws by hand: the distinct-class batch first, then the random one, 5 times a size
    rng, distinct, random_losses, floors = np.random.default_rng(1), [], [], []
    for size in (2, 4):
        for _ in range(5):
            chosen = rng.choice(np.arange(4), size, replace=False)
            batch = [rng.choice(np.flatnonzero(labels.numpy() == c)) for c in chosen]
            distinct.append(clip_loss(image_features[batch], captions[labels[batch]], 10.0).item())
            batch = torch.as_tensor(rng.choice(12, size, replace=False))
            random_losses.append(clip_loss(image_features[batch], captions[labels[batch]], 10.0).item())
            floors.append(loss_floor(labels[batch]))
    assert sweep.loc[2, "distinct classes (no duplicate captions)"] == pytest.approx(np.mean(distinct[:5]))
    assert sweep.loc[4, "distinct classes (no duplicate captions)"] == pytest.approx(np.mean(distinct[5:]))
    assert sweep.loc[4, "random batches"] == pytest.approx(np.mean(random_losses[5:]))
    assert sweep.loc[4, "floor of the random batches (duplicate captions)"] == pytest.approx(np.mean(floors[5:]))
    assert (sweep["random batches"] >= sweep["floor of the random batches (duplicate captions)"]).all()
