"""The checks against answers that are right only on the checks' easy inputs: shuffled labels, inputs changed in
place, results that change from one call to the next, gradients cut from one input, a loss scale that clipping
hides; and against correct answers in another form (tensors or arrays of indices, log_softmax first)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_helpers import checks, losses, retrieval, similarity
from clip_helpers.checks import ExerciseFailed


def verdict(check, answer, capsys) -> str:
    """'Correct: ...' when the check passes (and returns None), else the failure's message."""
    try:
        assert check(answer) is None
    except ExerciseFailed as error:
        capsys.readouterr()
        return f"failed: {error}"
    return capsys.readouterr().out


def assert_hint(check, answer, hint, capsys):
    seen = verdict(check, answer, capsys)
    assert seen.startswith("failed:") and hint in seen, seen


def assert_passes(check, answer, capsys):
    seen = verdict(check, answer, capsys)
    assert seen.startswith("Correct:"), seen


# ---------------------------------------------------------------- split and k-shot: labels in any order

def split_by_class(labels, val_fraction, seed):
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1) if len(members) > 1 else 0
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return train, val


def split_of_sorted_blocks(labels, val_fraction, seed):
    """Right when the labels come sorted by class: it cuts each class's block of positions, never reading labels."""
    counts = np.bincount(labels)
    rng = np.random.default_rng(seed)
    train, val, start = [], [], 0
    for count in counts:
        members = rng.permutation(np.arange(start, start + count))
        n_val = min(max(1, round(count * val_fraction)), count - 1) if count > 1 else 0
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
        start += count
    return train, val


@pytest.mark.parametrize("form", [list, np.array, torch.tensor, lambda part: torch.utils.data.Subset(range(999), part)])
def test_split_accepts_indices_as_lists_arrays_tensors_or_subsets(form, capsys):
    assert_passes(checks.check_split, lambda *args: tuple(form(part) for part in split_by_class(*args)), capsys)


def test_split_that_relies_on_sorted_labels_fails_on_shuffled_ones(capsys):
    assert_hint(checks.check_split, split_of_sorted_blocks, "not stratified", capsys)


def test_swapped_train_and_validation_are_named(capsys):
    assert_hint(checks.check_split, lambda *args: split_by_class(*args)[::-1], "wrong order", capsys)


def k_shot(labels, k, seed):
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < k:
            raise ValueError(f"class {label} has {len(members)} images")
        picks += rng.choice(members, k, replace=False).tolist()
    return picks


def k_shot_of_sorted_blocks(labels, k, seed):
    counts = np.bincount(labels)
    if counts.min() < k:
        raise ValueError("too few")
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [int(start + i) for start, count in zip(starts, counts) for i in rng.choice(count, k, replace=False)]


def test_k_shot_accepts_a_tensor_of_indices(capsys):
    assert_passes(checks.check_k_shot, lambda *args: torch.tensor(k_shot(*args)), capsys)


def test_k_shot_that_relies_on_sorted_labels_fails_on_shuffled_ones(capsys):
    assert_hint(checks.check_k_shot, k_shot_of_sorted_blocks, "every class needs exactly", capsys)


# ---------------------------------------------------------------- inputs changed in place, results that drift

def cosine_in_place(a, b):
    a /= a.norm()
    b /= b.norm()
    return a @ b


def matrix_in_place(image_features, text_features):
    image_features.div_(image_features.norm(dim=-1, keepdim=True))
    text_features.div_(text_features.norm(dim=-1, keepdim=True))
    return image_features @ text_features.T


def probabilities_in_place(similarity_, logit_scale):
    similarity_.mul_(logit_scale)
    return similarity_.softmax(dim=-1)


def classifier_in_place(text_features):
    text_features /= text_features.norm(dim=-1, keepdim=True)
    mean = text_features.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("check, answer", [
    (checks.check_cosine_similarity, cosine_in_place),
    (checks.check_similarity_matrix, matrix_in_place),
    (checks.check_caption_probabilities, probabilities_in_place),
    (checks.check_classifier, classifier_in_place),
], ids=["cosine", "matrix", "probabilities", "classifier"])
def test_an_answer_that_changes_its_input_in_place_is_named(check, answer, capsys):
    assert answer is not None
    assert_hint(check, answer, "changes its input in place", capsys)


def drifting(function):
    """The function, but a little different on every call after the first (state kept between calls)."""
    calls = []

    def answer(*args):
        calls.append(1)
        return function(*args) + 1e-3 * (len(calls) - 1)
    return answer


def top1(image_features, labels, classifier):
    return 100 * ((image_features @ classifier.T).argmax(dim=1) == labels).double().mean()


@pytest.mark.parametrize("check, answer", [
    (checks.check_top1, drifting(top1)),
    (checks.check_held_out_top1, drifting(top1)),
    (checks.check_similarity_matrix, drifting(similarity.similarity_matrix)),
    (checks.check_recall_at_k, drifting(lambda s, p, k: retrieval.recall_at_k(s, p, ks=(k,))[k])),
    (checks.check_clip_loss, drifting(losses.clip_loss)),
], ids=["top1", "held-out", "matrix", "recall", "loss"])
def test_an_answer_that_changes_from_one_call_to_the_next_is_named(check, answer, capsys):
    assert_hint(check, answer, "two calls on the same input", capsys)


# ---------------------------------------------------------------- the loss: every input learns

def loss_by_hand(image_features, text_features, logit_scale, detach=None, squash=None):
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    if detach == "texts":
        text_features = text_features.detach()
    if detach == "scale":
        logit_scale = float(logit_scale)
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits))
    squash = squash or (lambda x: x)
    return (F.cross_entropy(squash(logits), labels) + F.cross_entropy(squash(logits.T), labels)) / 2


@pytest.mark.parametrize("answer, hint", [
    (lambda i, t, s: loss_by_hand(i, t, s, detach="texts"), "no gradient reaches the text features"),
    (lambda i, t, s: loss_by_hand(i, t, s, detach="scale"), "no gradient reaches logit_scale"),
    (lambda i, t, s: loss_by_hand(i, t, s, squash=lambda x: x.softmax(dim=-1)), "softmax before cross_entropy"),
], ids=["detached text features", "float logit_scale", "softmax first"])
def test_loss_mistakes_the_old_check_accepted_or_left_unnamed(answer, hint, capsys):
    assert_hint(checks.check_clip_loss, answer, hint, capsys)


def test_log_softmax_before_cross_entropy_is_the_same_loss_and_passes(capsys):
    """log_softmax is idempotent, so cross_entropy(log_softmax(x)) is cross_entropy(x): not a mistake."""
    assert_passes(checks.check_clip_loss, lambda i, t, s: loss_by_hand(i, t, s, squash=lambda x: x.log_softmax(-1)),
                  capsys)


# ---------------------------------------------------------------- causal mask and recall@k: the neighbours

@pytest.mark.parametrize("answer, hint", [
    (lambda n: torch.zeros(n, n).masked_fill(torch.ones(n, n).triu(1).bool(), -1e9), "additive form"),
    (lambda n: torch.ones(n, n).tril(1).bool(), "tril(1)"),
], ids=["additive -1e9", "tril(1)"])
def test_mask_mistakes_are_named(answer, hint, capsys):
    assert_hint(checks.check_causal_mask, answer, hint, capsys)


def test_the_masks_fallback_names_a_wrong_entry_not_the_right_line(capsys):
    def almost(n):
        mask = torch.ones(n, n).tril().bool()
        mask[n - 1, 0] = False if n > 2 else mask[n - 1, 0]
        return mask
    seen = verdict(checks.check_causal_mask, almost, capsys)
    assert "entry [8, 0] is wrong" in seen and "tril" not in seen, seen


def recall_variant(similarity_, positives, k, cut=0, precision=False):
    top = similarity_.topk(max(k + cut, 0), dim=1).indices
    hits = positives.gather(1, top)
    return 100 * (hits.double().sum(dim=1) / k if precision else hits.any(dim=1).double()).mean()


@pytest.mark.parametrize("answer, hint", [
    (lambda s, p, k: recall_variant(s, p, k, precision=True), "that is precision@k"),
    (lambda s, p, k: recall_variant(s, p, k, cut=-1), "k-1 items"),
], ids=["precision@k", "topk(k-1)"])
def test_recall_mistakes_are_named(answer, hint, capsys):
    assert_hint(checks.check_recall_at_k, answer, hint, capsys)


def test_the_transposed_matrix_hint_does_not_give_the_product(capsys):
    seen = verdict(checks.check_similarity_matrix, lambda i, t: similarity.similarity_matrix(t, i), capsys)
    assert "transposed" in seen and "@" not in seen and ".T" not in seen, seen


# ---------------------------------------------------------------- the training step

def step(model, images, tokens, optimizer, scheduler, grad_clip, scale=1.0, returned=1.0, images_no_grad=False,
         double=False):
    if double:
        model.double()
        images = images.double()
    optimizer.zero_grad()
    if images_no_grad:
        with torch.no_grad():
            image_features = model.encode_image(images)
    else:
        image_features = model.encode_image(images)
    loss = losses.clip_loss(image_features, model.encode_text(tokens), model.logit_scale.exp())
    (scale * loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return returned * scale * loss.item()


def test_the_step_as_written_in_the_notebook_passes(capsys):
    assert_passes(checks.check_train_step, step, capsys)


@pytest.mark.parametrize("options, hint", [
    (dict(scale=2.0), "your loss is 2 times CLIP's"),
    (dict(scale=3.0, returned=1 / 3), "clipping hid"),
    (dict(images_no_grad=True), "no gradient reaches the image features"),
    (dict(double=True), "torch.float64"),
], ids=["summed directions", "scaled only in backward", "images under no_grad", "float64 model"])
def test_train_step_mistakes_clipping_or_dtype_used_to_hide(options, hint, capsys):
    assert_hint(checks.check_train_step, lambda *args: step(*args, **options), hint, capsys)


def test_every_check_returns_none_when_it_passes(capsys):
    """nbgrader reads a test cell's returned value as its score, and True is not one."""
    assert checks.check_top1(top1) is None
    assert checks.check_loss_floor(lambda labels: losses.loss_floor(labels)) is None
