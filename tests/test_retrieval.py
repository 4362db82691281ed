import numpy as np
import pytest
import torch

from clip_helpers import retrieval


def brute_ranks(similarity, positives):
    """Each query's gallery sorted by (-score, index) in plain Python; the first true partner's position."""
    similarity, positives = np.asarray(similarity, dtype=float), np.asarray(positives, dtype=bool)
    result = []
    for query in range(similarity.shape[0]):
        order = sorted(range(similarity.shape[1]), key=lambda j: (-similarity[query, j], j))
        result.append(next(position for position, j in enumerate(order) if positives[query, j]))
    return np.array(result)


def brute_recall(similarity, positives, k):
    return 100 * np.mean(brute_ranks(similarity, positives) < k)


def captioned(n_images, captions_per_image, seed):
    """Integer-valued features, so many similarities tie exactly; several captions per image, shuffled."""
    rng = np.random.default_rng(seed)
    text_image_ids = rng.permutation(np.repeat(np.arange(n_images), captions_per_image))
    similarity = rng.integers(0, 4, size=(n_images, len(text_image_ids))).astype(np.float32)
    return torch.from_numpy(similarity), torch.from_numpy(text_image_ids)


def test_hand_made_3x3():
    similarity = torch.tensor([[0.9, 0.1, 0.3],
                               [0.2, 0.8, 0.95],   # its partner (0.8) is beaten by 0.95
                               [0.5, 0.4, 0.1]])   # its partner (0.1) is last
    positives = torch.eye(3, dtype=torch.bool)
    assert retrieval.ranks(similarity, positives).tolist() == [0, 1, 2]
    recall = retrieval.recall_at_k(similarity, positives, ks=(1, 2, 3))
    assert recall == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})


def test_ties_go_to_the_lower_gallery_index():
    similarity = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.7, 0.7]])
    positives = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    # q0: its partner ties with index 0, which comes first; q1: partner ties with a later index, stays first.
    assert retrieval.ranks(similarity, positives).tolist() == [1, 0, 1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("captions_per_image", [1, 5])
def test_recall_both_ways_matches_brute_force_with_ties(seed, captions_per_image):
    similarity, text_image_ids = captioned(12, captions_per_image, seed)
    text_to_image = retrieval.partners(text_image_ids, 12)
    for scores, positives in ((similarity.T, text_to_image), (similarity, text_to_image.T)):
        assert (scores[:, None, :] == scores[:, :, None]).sum() > 2 * scores.numel()  # ties really occur
        np.testing.assert_array_equal(retrieval.ranks(scores, positives, chunk_size=5),
                                      brute_ranks(scores, positives))
        recall = retrieval.recall_at_k(scores, positives, ks=(1, 5, 10))
        for k in (1, 5, 10):
            assert recall[k] == pytest.approx(brute_recall(scores, positives, k))


def test_image_found_when_any_of_its_captions_is_in_the_top_k():
    # Image 0 has captions 0 and 1; caption 1 scores second best, caption 0 last.
    similarity = torch.tensor([[0.0, 0.8, 0.9, 0.1]])
    text_to_image = retrieval.partners([0, 0, 1, 2], 3)  # only image 0 queried here
    positives = text_to_image.T[:1]
    assert retrieval.ranks(similarity, positives).tolist() == [1]
    assert retrieval.recall_at_k(similarity, positives, ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_without_ties_ranks_agree_with_open_clip_style_argsort():
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(30, 30, generator=generator)
    ranking = torch.argsort(similarity, dim=1, descending=True)
    argsort_ranks = torch.where(ranking == torch.arange(30)[:, None])[1]
    assert torch.equal(retrieval.ranks(similarity, torch.eye(30, dtype=torch.bool)), argsort_ranks)


def test_retrieval_scores_from_features_match_brute_force():
    generator = torch.Generator().manual_seed(1)
    image_features = torch.randn(8, 6, generator=generator)
    text_image_ids = torch.arange(8).repeat_interleave(5)
    text_features = image_features[text_image_ids] + 1.5 * torch.randn(40, 6, generator=generator)
    table = retrieval.retrieval_scores(image_features, text_features, text_image_ids, ks=(1, 5))
    unit = lambda x: x.double() / x.double().norm(dim=1, keepdim=True)  # noqa: E731
    similarity = (unit(image_features) @ unit(text_features).T).numpy()
    positives = text_image_ids.numpy()[None, :] == np.arange(8)[:, None]
    for k in (1, 5):
        assert table.loc["image->text", f"R@{k}"] == pytest.approx(brute_recall(similarity, positives, k))
        assert table.loc["text->image", f"R@{k}"] == pytest.approx(brute_recall(similarity.T, positives.T, k))
    assert 0 < table.loc["text->image", "R@1"] < 100  # neither trivial nor impossible


def test_top_hits_are_the_stable_order_and_agree_with_ranks():
    similarity, _ = captioned(5, 3, seed=7)
    for query in range(5):
        indices, scores = retrieval.top_hits(similarity, query, k=6)
        order = sorted(range(15), key=lambda j: (-similarity[query, j].item(), j))[:6]
        assert indices.tolist() == order
        assert torch.equal(scores, similarity[query, order])
        target = torch.zeros(1, 15, dtype=torch.bool)
        target[0, order[3]] = True
        assert retrieval.ranks(similarity[query:query + 1], target).item() == 3


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="no true partner"):
        retrieval.ranks(torch.rand(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        retrieval.ranks(torch.tensor([[float("nan"), 0.0]]), torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="shape"):
        retrieval.ranks(torch.rand(2, 3), torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="index the 3 images"):
        retrieval.partners([0, 3], 3)


def test_same_class_partners_match_brute_force_with_several_images_per_caption():
    # Captions written per class (templates x classes) over several images per class, as notebook 10 does.
    generator = torch.Generator().manual_seed(3)
    image_labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0, 1])
    text_labels = torch.arange(3).repeat_interleave(4)
    centres = torch.randn(3, 6, generator=generator)
    image_features = centres[image_labels] + 1.2 * torch.randn(9, 6, generator=generator)
    text_features = centres[text_labels] + 1.2 * torch.randn(12, 6, generator=generator)
    positives = retrieval.same_class(text_labels, image_labels)
    assert positives.shape == (12, 9) and positives.sum().item() == 12 * 3  # each caption: its class's 3 images
    table = retrieval.retrieval_scores(image_features, text_features, None, ks=(1, 2), text_to_image=positives)
    unit = lambda x: x.double() / x.double().norm(dim=1, keepdim=True)  # noqa: E731
    similarity = (unit(image_features) @ unit(text_features).T).numpy()
    by_hand = text_labels.numpy()[:, None] == image_labels.numpy()[None, :]
    for k in (1, 2):
        assert table.loc["text->image", f"R@{k}"] == pytest.approx(brute_recall(similarity.T, by_hand, k))
        assert table.loc["image->text", f"R@{k}"] == pytest.approx(brute_recall(similarity, by_hand.T, k))
    assert 0 < table.loc["text->image", "R@1"] < 100
