"""The exercises' checks: each passes the reference, rejects typical wrong answers with the matching hint,
and never shows the reference's code."""
import inspect
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_helpers import checks, data, geometry, losses, probe, retrieval, siglip, similarity, zeroshot
from clip_helpers.checks import ExerciseFailed, encoders as encoder_checks, train as train_checks, zeroshot as zeroshot_checks
from clip_helpers.checks import failures as failure_checks
from clip_helpers.text import encode_texts


def reference_lines() -> set:
    """Code lines of the reference solutions (docstrings and comments left out): none may reach the student."""
    functions = [similarity.cosine_similarity, similarity.normalize, similarity.similarity_matrix, losses.clip_loss,
                 losses.contrastive_targets, data.split, zeroshot.build_classifier, zeroshot_checks.reference_classifier,
                 train_checks.reference_step, checks.loss_floor, encoder_checks.reference_mask, probe.k_shot_indices,
                 retrieval.ranks, retrieval.recall_at_k, siglip.siglip_loss, failure_checks.naive_accumulated_loss,
                 geometry.modality_gap, geometry.centroid, geometry.best_threshold]
    lines = set()
    for function in functions:
        for line in inspect.getsource(function).splitlines():
            line = line.strip().removeprefix("return ").strip()
            # a bare call such as optimizer.zero_grad() is the name of a step the exercise itself lists
            if len(line) >= 12 and not line.startswith(("#", '"', "def ")) and not re.fullmatch(r"[\w.]+\(\)", line):
                lines.add(line)
    return lines


REFERENCE_LINES = reference_lines()


def outcome(check, answer, capsys):
    """(passed, everything the student sees: printed text and the failure's message)."""
    try:
        result = check(answer)
        assert result is None, "a check returns None when it passes (autograders read a value as a score)"
        result, message = True, ""
    except ExerciseFailed as error:
        result, message = False, str(error)
    seen = capsys.readouterr().out + message
    leaked = [line for line in REFERENCE_LINES if line in seen]
    assert not leaked, f"the check showed reference code: {leaked}"
    return result, seen


def assert_rejected(check, answer, hint, capsys):
    passed, seen = outcome(check, answer, capsys)
    assert passed is False and "Correct" not in seen
    assert hint in seen, f"expected the hint {hint!r}, got: {seen}"


def assert_accepted(check, answer, capsys):
    passed, seen = outcome(check, answer, capsys)
    assert passed is True and seen.startswith("Correct:"), seen


def not_written(*args):
    raise NotImplementedError("Exercise: write it")


# ---------------------------------------------------------------- cosine similarity (eq. 2)

def cosine_raising_on_zero(a, b):
    if not a.any() or not b.any():
        raise ValueError("a zero vector has no direction")
    return (a @ b) / (a.norm() * b.norm())


def cosine_with_numpy(a, b):  # a different, correct way: numpy and Python floats
    a, b = np.asarray(a), np.asarray(b)
    with np.errstate(invalid="ignore"):  # a zero vector: nan, one of the accepted answers
        return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


@pytest.mark.parametrize("answer", [similarity.cosine_similarity, cosine_raising_on_zero, cosine_with_numpy])
def test_cosine_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_cosine_similarity, answer, capsys)


COSINE_WRONG = {
    "dot product": (lambda a, b: (a * b).sum(), "not normalised"),
    "one side": (lambda a, b: (a * b).sum() / a.norm(), "normalised only one side"),
    "sign": (lambda a, b: -(a * b).sum() / (a.norm() * b.norm()), "the sign is flipped"),
    "abs": (lambda a, b: (a * b).sum().abs() / (a.norm() * b.norm()), "opposite vectors come out positive"),
    "squared lengths": (lambda a, b: (a * b).sum() / ((a * a).sum() * (b * b).sum()), "squared lengths"),
    "distance": (lambda a, b: 1 - (a * b).sum() / (a.norm() * b.norm()), "cosine distance"),
    "not summed": (lambda a, b: a * b / (a.norm() * b.norm()), "the cosine is one number"),
    "eps hides zero vector": (lambda a, b: (a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12), "0/0, undefined"),
    "not written": (not_written, "not written yet"),
    "crashes": (lambda a, b: a.dot(b.tolist()), "your function raised TypeError"),
}


@pytest.mark.parametrize("name", COSINE_WRONG)
def test_cosine_check_names_the_mistake(name, capsys):
    answer, hint = COSINE_WRONG[name]
    assert_rejected(checks.check_cosine_similarity, answer, hint, capsys)


# ---------------------------------------------------------------- similarity matrix

def matrix_with_loops(image_features, text_features):
    return torch.tensor([[similarity.cosine_similarity(i, t).item() for t in text_features] for i in image_features])


@pytest.mark.parametrize("answer", [similarity.similarity_matrix, matrix_with_loops,
                                    lambda i, t: F.normalize(i, dim=1) @ F.normalize(t, dim=1).T])
def test_matrix_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_similarity_matrix, answer, capsys)


MATRIX_WRONG = {
    "raw product": (lambda i, t: i @ t.T, "features are not normalised"),
    "transposed": (lambda i, t: similarity.similarity_matrix(t, i), "transposed: your rows are texts"),
    "images only": (lambda i, t: similarity.normalize(i) @ t.T, "only the image features are normalised"),
    "wrong axis": (lambda i, t: F.normalize(i, dim=0) @ F.normalize(t, dim=0).T, "wrong axis"),
    "two mistakes": (lambda i, t: t @ i.T, "several things"),
    "wrong shape": (lambda i, t: similarity.similarity_matrix(i, i), "must have shape (n_images, n_texts)"),
}


@pytest.mark.parametrize("name", MATRIX_WRONG)
def test_matrix_check_names_the_mistake(name, capsys):
    answer, hint = MATRIX_WRONG[name]
    assert_rejected(checks.check_similarity_matrix, answer, hint, capsys)


def test_two_mistakes_are_both_named(capsys):
    passed, seen = outcome(checks.check_similarity_matrix, lambda i, t: t @ i.T, capsys)
    assert "not normalised" in seen and "transposed" in seen


# ---------------------------------------------------------------- the contrastive loss

def paper_pseudocode(image_features, text_features, logit_scale):
    """The paper's Figure 3, written independently of the kit."""
    image_embeddings = F.normalize(image_features, dim=1)
    text_embeddings = F.normalize(text_features, dim=1)
    logits = image_embeddings @ text_embeddings.T * logit_scale
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def logits_of(image_features, text_features, logit_scale):
    return logit_scale * similarity.normalize(image_features) @ similarity.normalize(text_features).T


def one_sided(i, t, s):
    logits = logits_of(i, t, s)
    return F.cross_entropy(logits, torch.arange(len(logits)))


def text_side_forgets_transpose(i, t, s):
    logits, labels = logits_of(i, t, s), torch.arange(len(i))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits, labels)) / 2


def zero_targets(i, t, s):
    logits, labels = logits_of(i, t, s), torch.zeros(len(i), dtype=torch.long)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def not_normalised(i, t, s):
    logits, labels = s * i @ t.T, torch.arange(len(i))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def summed_over_batch(i, t, s):
    logits, labels = logits_of(i, t, s), torch.arange(len(i))
    return (F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(logits.T, labels, reduction="sum")) / 2


@pytest.mark.parametrize("answer", [lambda i, t, s: losses.clip_loss(i, t, s), paper_pseudocode])
def test_loss_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_clip_loss, answer, capsys)


LOSS_WRONG = {
    "one-sided": (one_sided, "only the image->text direction is averaged"),
    "forgot the transpose": (text_side_forgets_transpose, "only the image->text direction is averaged"),
    "text side only": (lambda i, t, s: one_sided(t, i, s), "only the text->image direction"),
    "diagonal not the target": (zero_targets, "the diagonal is not the target"),
    "not normalised": (not_normalised, "features are not normalised"),
    "no scale": (lambda i, t, s: paper_pseudocode(i, t, 1.0), "logit_scale not applied"),
    "scale exponentiated": (lambda i, t, s: paper_pseudocode(i, t, s.exp()), "do not exponentiate"),
    "log of the scale": (lambda i, t, s: paper_pseudocode(i, t, s.log()), "not by its log"),
    "sum instead of mean": (summed_over_batch, "sum instead of mean"),
    "directions added": (lambda i, t, s: 2 * paper_pseudocode(i, t, s), "you add the two directions"),
    "detached": (lambda i, t, s: torch.tensor(paper_pseudocode(i, t, s).item()), "cut off from the features"),
    "a float": (lambda i, t, s: paper_pseudocode(i, t, s).item(), "return the loss as a torch scalar"),
}


@pytest.mark.parametrize("name", LOSS_WRONG)
def test_loss_check_names_the_mistake(name, capsys):
    answer, hint = LOSS_WRONG[name]
    assert_rejected(checks.check_clip_loss, answer, hint, capsys)


# ---------------------------------------------------------------- the floor of duplicate captions

def numerical_minimum(labels, steps=600):
    """The plain loss minimised over free image features, one caption feature per label, and logit_scale."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor(labels)
    image_features = torch.randn(len(labels), 8, generator=generator).requires_grad_()
    caption_features = torch.randn(int(labels.max()) + 1, 8, generator=generator).requires_grad_()
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    optimizer = torch.optim.Adam([image_features, caption_features, log_scale], lr=0.05)
    lowest, threads = math.inf, torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waiting on a shared machine (30x slower here)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = losses.clip_loss(image_features, caption_features[labels], log_scale.exp())  # identical captions
            loss.backward()
            optimizer.step()
            lowest = min(lowest, loss.item())
    finally:
        torch.set_num_threads(threads)
    return lowest


@pytest.mark.parametrize("labels", [[0, 0, 0, 1, 1, 2], [0, 0, 1, 1], [3, 3, 3, 3], [0, 1, 2]])
def test_the_analytic_floor_is_what_gradient_descent_reaches_and_never_beats(labels):
    floor, reached = checks.loss_floor(labels), numerical_minimum(labels)
    assert floor - 1e-6 <= reached <= floor + 0.02


def test_the_floor_by_hand():
    assert checks.loss_floor([0, 1, 2, 3]) == 0
    assert math.isclose(checks.loss_floor([0, 0, 0, 1]), 3 * math.log(3) / 4)
    assert math.isclose(checks.loss_floor(checks.FLOOR_QUESTION), math.log(8))


@pytest.mark.parametrize("answer", [checks.loss_floor, math.log(8), 2.08, torch.tensor(8.0).log()])
def test_floor_check_accepts_a_function_or_the_number(answer, capsys):
    assert_accepted(checks.check_loss_floor, answer, capsys)


def mean_over_classes(labels):
    counts = np.unique(labels, return_counts=True)[1]
    return float(np.mean(np.log(counts)))


FLOOR_WRONG = {
    "zero": (0.0, "0 is the floor when every caption is distinct"),
    "zero function": (lambda labels: 0.0, "0 is the floor when every caption is distinct"),
    "averaged over classes": (mean_over_classes, "average log k over the classes"),
    "one direction only": (lambda labels: checks.loss_floor(labels) / 2, "half of the floor"),
    "log base 2": (3.0, "natural log"),
    "accuracy ceiling": (1 / 8, "in-batch accuracy"),
    "not a number": ("log 8", "the floor is one number"),
}


@pytest.mark.parametrize("name", FLOOR_WRONG)
def test_floor_check_names_the_mistake(name, capsys):
    answer, hint = FLOOR_WRONG[name]
    assert_rejected(checks.check_loss_floor, answer, hint, capsys)


# ---------------------------------------------------------------- prompt ensembling

def test_the_checks_reference_is_build_classifier(mini):
    class_names, templates = ["circle", "star", "square"], ["a {}.", "a photo of a {}.", "a drawing of the {}."]
    with torch.no_grad():
        text_features = encode_texts(mini, [t.format(name) for name in class_names for t in templates])
    text_features = text_features.reshape(len(class_names), len(templates), -1)
    torch.testing.assert_close(zeroshot_checks.reference_classifier(text_features),
                               zeroshot.build_classifier(mini, class_names, templates))


@pytest.mark.parametrize("answer", [zeroshot_checks.reference_classifier,
                                    lambda f: F.normalize(F.normalize(f, dim=-1).sum(dim=1), dim=-1)])
def test_classifier_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_classifier, answer, capsys)


CLASSIFIER_WRONG = {
    "averaged before normalising": (lambda f: F.normalize(f.mean(dim=1), dim=-1), "averaged before normalising"),
    "not renormalised": (lambda f: F.normalize(f, dim=-1).mean(dim=1), "not renormalised"),
    "over classes": (lambda f: F.normalize(F.normalize(f, dim=-1).mean(dim=0), dim=-1),
                     "averaged over classes instead of templates"),
    "first template only": (lambda f: F.normalize(f[:, 0], dim=-1), "yours differ"),
}


@pytest.mark.parametrize("name", CLASSIFIER_WRONG)
def test_classifier_check_names_the_mistake(name, capsys):
    answer, hint = CLASSIFIER_WRONG[name]
    assert_rejected(checks.check_classifier, answer, hint, capsys)


# ---------------------------------------------------------------- top-1 instead of evaluateModel

def top1_by_hand(image_features, labels, classifier):
    return 100 * ((image_features @ classifier.T).argmax(dim=1) == labels).float().mean().item()


def inbatch_matching(image_features, labels, classifier):  # the report's evaluateModel idea
    return 100 * ((image_features @ classifier.T).argmax(dim=1) == torch.arange(len(labels))).float().mean().item()


def test_top1_check_accepts_the_kit_and_a_hand_version(capsys):
    assert_accepted(checks.check_top1, lambda f, l, c: zeroshot.scores(f, l, c)["top1"], capsys)
    assert_accepted(checks.check_top1, top1_by_hand, capsys)


@pytest.mark.parametrize("answer, hint", [(inbatch_matching, "in-batch matching"),
                                          (lambda f, l, c: top1_by_hand(f, l, c) / 100, "give a percentage")])
def test_top1_check_names_the_mistake(answer, hint, capsys):
    assert_rejected(checks.check_top1, answer, hint, capsys)


# ---------------------------------------------------------------- the split

class Labelled:
    def __init__(self, labels):
        self.targets = labels


def kit_split(labels, val_fraction, seed):
    return data.split(Labelled(labels), val_fraction, seed)  # Subsets are accepted as they are


def report_split(labels, val_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = int(len(labels) * val_fraction)
    return order.tolist(), order[:n_val].tolist()  # validation rows are the first training rows


def unstratified(labels, val_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    return order[n_val:], order[:n_val]


def report_slices(labels, val_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(labels)).tolist()
    return order[:int(0.3 * len(labels))], order[int(0.3 * len(labels)):int(0.33 * len(labels))]


def per_class(labels, val_fraction, seed, shuffle=True, rng=None):
    rng = rng or np.random.default_rng(seed)
    labels, train, val = np.array(labels), [], []
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        indices = rng.permutation(indices) if shuffle else indices
        n_val = min(max(int(round(len(indices) * val_fraction)), 1 if len(indices) > 1 else 0), len(indices) - 1)
        val += indices[:n_val].tolist()
        train += indices[n_val:].tolist()
    return train, val


def small_classes_in_training(labels, val_fraction, seed):
    train, val = per_class(labels, val_fraction, seed)
    small = [index for index in val if labels.count(labels[index]) < 5]  # class 8 has 2 items, one in val
    return train + small, [index for index in val if index not in small]


def test_split_check_accepts_the_kit_and_a_hand_version(capsys):
    assert_accepted(checks.check_split, kit_split, capsys)
    assert_accepted(checks.check_split, per_class, capsys)


SPLIT_WRONG = {
    "the report's leak": (report_split, "validation rows also in training"),
    "the report's slices": (report_slices, "in neither part"),
    "not stratified": (unstratified, "not stratified"),
    "no shuffle": (lambda l, f, s: per_class(l, f, s, shuffle=False), "seed 0 and seed 1 give the same split"),
    "global random state": (lambda l, f, s: per_class(l, f, s, rng=np.random.default_rng()), "same seed gave different"),
    "small class all in training": (small_classes_in_training, "needs one on each side"),
    "one list": (lambda l, f, s: list(range(len(l))), "return two lists of indices"),
}


@pytest.mark.parametrize("name", SPLIT_WRONG)
def test_split_check_names_the_mistake(name, capsys):
    answer, hint = SPLIT_WRONG[name]
    assert_rejected(checks.check_split, answer, hint, capsys)


# ---------------------------------------------------------------- the training step

def step(model, images, tokens, optimizer, scheduler, grad_clip, order=("zero_grad", "loss", "backward", "clip",
                                                                         "step", "scheduler"), clip=None):
    """A training step whose parts run in `order`; leaving a part out of `order` leaves it out of the step."""
    loss = None
    for part in order:
        if part == "zero_grad":
            optimizer.zero_grad()
        elif part == "loss":
            logits_per_image, logits_per_text = model(images, tokens)  # clip's own forward: an independent loss
            labels = torch.arange(len(images))
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        elif part == "backward":
            loss.backward()
        elif part == "clip":
            (clip or torch.nn.utils.clip_grad_norm_)(model.parameters(), grad_clip)
        elif part == "step":
            optimizer.step()
        elif part == "scheduler":
            scheduler.step()
    return loss.item()


def without(*parts):
    return tuple(p for p in ("zero_grad", "loss", "backward", "clip", "step", "scheduler") if p not in parts)


def test_train_step_check_accepts_a_correct_step(capsys):
    assert_accepted(checks.check_train_step, step, capsys)
    assert_accepted(checks.check_train_step, lambda *args: torch.tensor(step(*args)), capsys)  # a 0-d tensor is fine


TRAIN_WRONG = {
    "forgot zero_grad": (dict(order=without("zero_grad")), "forgot zero_grad"),
    "forgot step": (dict(order=without("step")), "forgot optimizer.step()"),
    "step before backward": (dict(order=("zero_grad", "loss", "step", "backward", "clip", "scheduler")),
                             "optimizer.step() runs before loss.backward()"),
    "no clipping": (dict(order=without("clip")), "no gradient clipping"),
    "clipping before backward": (dict(order=("zero_grad", "loss", "clip", "backward", "step", "scheduler")),
                                 "no gradient clipping"),
    "clipping values": (dict(clip=torch.nn.utils.clip_grad_value_), "each gradient value separately"),
    "scheduler not stepped": (dict(order=without("scheduler")), "scheduler not stepped"),
    "scheduler first": (dict(order=("zero_grad", "loss", "backward", "clip", "scheduler", "step")),
                        "scheduler.step() runs before optimizer.step()"),
    "zero_grad after backward": (dict(order=("loss", "backward", "zero_grad", "clip", "step", "scheduler")),
                                 "erases the gradients"),
}


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # torch warns the student too: fine
@pytest.mark.parametrize("name", TRAIN_WRONG)
def test_train_step_check_names_the_mistake(name, capsys):
    options, hint = TRAIN_WRONG[name]
    assert_rejected(checks.check_train_step, lambda *args: step(*args, **options), hint, capsys)


def test_train_step_check_wants_the_loss_back(capsys):
    assert_rejected(checks.check_train_step, lambda *args: step(*args) and None, "return the batch's loss", capsys)


def test_train_step_check_explains_its_stand_in_model(capsys):
    kit_style = lambda model, *args: model.positional_embedding.device  # noqa: E731 (the kit's step finds the device so)
    assert_rejected(checks.check_train_step, kit_style, "next(model.parameters()).device", capsys)


def test_the_clipping_threshold_is_below_the_gradient_norm():
    """Otherwise a step without clipping would pass."""
    model = train_checks.TinyCLIP()
    images, tokens = train_checks.batches()[0]
    losses.clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp()).backward()
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf) > 10 * train_checks.GRAD_CLIP


# ---------------------------------------------------------------- the causal mask (02)

def mask_of_clip(n):
    """clip's own mask (build_attention_mask: -inf above the diagonal), turned into allowed/not allowed."""
    from clip_helpers.models import build_random_clip
    model = build_random_clip("mini", seed=0)
    model.context_length = n
    return model.build_attention_mask() == 0


@pytest.mark.parametrize("answer", [lambda n: torch.ones(n, n).tril().bool(), mask_of_clip,
                                    lambda n: [[1 if j <= i else 0 for j in range(n)] for i in range(n)]])
def test_mask_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_causal_mask, answer, capsys)


MASK_WRONG = {
    "transposed": (lambda n: torch.ones(n, n).triu().bool(), "transposed"),
    "no diagonal": (lambda n: torch.ones(n, n).tril(-1).bool(), "the diagonal is missing"),
    "no mask": (lambda n: torch.ones(n, n, dtype=torch.bool), "no mask"),
    "clip's additive form": (lambda n: torch.full((n, n), float("-inf")).triu(1), "additive form"),
    "wrong shape": (lambda n: torch.ones(n).bool(), "an [1, 1] matrix"),
}


@pytest.mark.parametrize("name", MASK_WRONG)
def test_mask_check_names_the_mistake(name, capsys):
    answer, hint = MASK_WRONG[name]
    assert_rejected(checks.check_causal_mask, answer, hint, capsys)


# ---------------------------------------------------------------- each image's softmax over captions (06)

@pytest.mark.parametrize("answer", [lambda s, l: F.softmax(l * s, dim=1),
                                    lambda s, l: (l * s).exp() / (l * s).exp().sum(dim=1, keepdim=True)])
def test_probability_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_caption_probabilities, answer, capsys)


PROBABILITY_WRONG = {
    "over images": (lambda s, l: F.softmax(l * s, dim=0), "softmax over the wrong axis"),
    "no scale": (lambda s, l: F.softmax(s, dim=-1), "logit_scale not applied"),
    "scale exponentiated": (lambda s, l: F.softmax(math.exp(l) * s.double(), dim=-1), "do not exponentiate"),
    "scaled after": (lambda s, l: l * F.softmax(s, dim=-1), "applied after the softmax"),
    "two mistakes": (lambda s, l: F.softmax(s, dim=0), "several things"),
    "logits, not probabilities": (lambda s, l: l * s, "each row should be the softmax"),
}


@pytest.mark.parametrize("name", PROBABILITY_WRONG)
def test_probability_check_names_the_mistake(name, capsys):
    answer, hint = PROBABILITY_WRONG[name]
    assert_rejected(checks.check_caption_probabilities, answer, hint, capsys)


# ---------------------------------------------------------------- top-1 on held-out pairs (08)

def restricted_to_present(image_features, labels, classifier):
    """Chooses only among the classes that occur in labels, as if the model knew which pairs were held out."""
    present = labels.unique()
    predictions = present[(image_features @ classifier[present].T).argmax(dim=1)]
    return 100 * (predictions == labels).float().mean().item()


def test_held_out_check_accepts_the_kit_and_a_hand_version(capsys):
    assert_accepted(checks.check_held_out_top1, lambda f, l, c: zeroshot.scores(f, l, c)["top1"], capsys)
    assert_accepted(checks.check_held_out_top1, top1_by_hand, capsys)


@pytest.mark.parametrize("answer, hint", [(restricted_to_present, "only among the classes present"),
                                          (lambda f, l, c: top1_by_hand(f, l, c) / 100, "give a percentage"),
                                          (lambda f, l, c: [1.0, 2.0], "return one number")])
def test_held_out_check_names_the_mistake(answer, hint, capsys):
    assert_rejected(checks.check_held_out_top1, answer, hint, capsys)


def test_restricting_the_classes_inflates_every_held_out_case():
    """Otherwise the check could not tell the restricted answer from the right one."""
    for case in zeroshot_checks.held_out_cases():
        assert restricted_to_present(*case) > zeroshot.scores(*case)["top1"]


# ---------------------------------------------------------------- k-shot draws (09)

def k_shot_by_hand(labels, k, seed):
    rng, labels = np.random.default_rng(seed), np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < k:
            raise ValueError(f"class {label} has only {len(members)} images")
        chosen += rng.permutation(members)[:k].tolist()
    return chosen


def first_k(labels, k, seed):
    labels = np.asarray(labels)
    return [int(i) for label in np.unique(labels) for i in np.flatnonzero(labels == label)[:k]]


def with_replacement(labels, k, seed):
    rng, labels = np.random.default_rng(seed), np.asarray(labels)
    return [int(i) for label in np.unique(labels) for i in rng.choice(np.flatnonzero(labels == label), k, replace=True)]


def fewer_when_short(labels, k, seed):
    rng, labels = np.random.default_rng(seed), np.asarray(labels)
    return [int(i) for label in np.unique(labels) for i in rng.permutation(np.flatnonzero(labels == label))[:k]]


@pytest.mark.parametrize("answer", [probe.k_shot_indices, k_shot_by_hand])
def test_k_shot_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_k_shot, answer, capsys)


K_SHOT_WRONG = {
    "k in total": (lambda l, k, s: np.random.default_rng(s).permutation(len(l))[:k].tolist(), "k images of EVERY class"),
    "first k of each class": (first_k, "all draw the same images"),
    "with replacement": (with_replacement, "drawn more than once"),
    "global random state": (lambda l, k, s: k_shot_by_hand(l, k, np.random.randint(1 << 30)), "same seed drew different"),
    "fewer when a class is short": (fewer_when_short, "class 3 has only 4 images"),
    "not written": (not_written, "not written yet"),
}


@pytest.mark.parametrize("name", K_SHOT_WRONG)
def test_k_shot_check_names_the_mistake(name, capsys):
    answer, hint = K_SHOT_WRONG[name]
    assert_rejected(checks.check_k_shot, answer, hint, capsys)


# ---------------------------------------------------------------- recall@k (10)

def recall_by_hand(similarity, positives, k):
    found = [bool(positives[q, similarity[q].argsort(descending=True)[:k]].any()) for q in range(len(similarity))]
    return 100 * sum(found) / len(found)


@pytest.mark.parametrize("answer", [lambda s, p, k: retrieval.recall_at_k(s, p, ks=(k,))[k], recall_by_hand])
def test_recall_check_accepts_correct_answers(answer, capsys):
    assert_accepted(checks.check_recall_at_k, answer, capsys)


def first_partner_only(similarity, positives, k):
    first = positives.int().argmax(dim=1)
    top = similarity.topk(k, dim=1).indices
    return 100 * (top == first[:, None]).any(dim=1).float().mean().item()


RECALL_WRONG = {
    "ascending": (lambda s, p, k: recall_by_hand(-s, p, k), "least similar first"),
    "off by one": (lambda s, p, k: recall_by_hand(s, p, k + 1), "off by one"),
    "first partner only": (first_partner_only, "only the first true partner counts"),
    "fraction": (lambda s, p, k: recall_by_hand(s, p, k) / 100, "give a percentage"),
    "per query": (lambda s, p, k: [recall_by_hand(s[q:q + 1], p[q:q + 1], k) for q in range(len(s))], "return one number"),
}


@pytest.mark.parametrize("name", RECALL_WRONG)
def test_recall_check_names_the_mistake(name, capsys):
    answer, hint = RECALL_WRONG[name]
    assert_rejected(checks.check_recall_at_k, answer, hint, capsys)


def test_the_stub_message_reaches_the_student(capsys):
    def stub(*args):
        raise NotImplementedError("Exercise (10_x.ipynb, cell 9): write the body of recall_at_k()")
    assert_rejected(checks.check_recall_at_k, stub, "(Exercise (10_x.ipynb, cell 9): write the body", capsys)


# ---------------------------------------------------------------- failures read as hints; open questions

def test_ipython_shows_the_hint_not_the_checks_frames():
    error = ExerciseFailed("clip_loss: only the image->text direction is averaged")
    assert error._render_traceback_() == ["\x1b[31mNot yet:\x1b[0m clip_loss: only the image->text direction is averaged"]


def test_every_numbered_notebook_has_an_open_question():
    from pathlib import Path
    numbers = sorted(path.name[:2] for path in (Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb")
                     if not path.name.startswith("00_"))  # 00_start_here is front matter: no exercises
    assert numbers and sorted(checks.answers.ANSWERS) == numbers


def test_reveal_prints_the_question_and_the_model_answer(capsys, monkeypatch):
    monkeypatch.setenv(checks.answers.INSTRUCTOR_VARIABLE, "1")
    checks.reveal(4)
    printed = capsys.readouterr().out
    assert printed.startswith("Question: The loss of an untrained model") and "A model answer: No." in printed
    checks.reveal("04_contrastive_loss")
    assert capsys.readouterr().out == printed
    assert checks.question("04") in printed.replace("\n", " ")
    with pytest.raises(ValueError, match="reveal\\('04'\\)"):
        checks.reveal("99")


def test_reveal_keeps_the_model_answer_from_a_students_kernel(capsys, monkeypatch):
    monkeypatch.delenv(checks.answers.INSTRUCTOR_VARIABLE, raising=False)
    checks.reveal("04")
    printed = capsys.readouterr().out
    assert printed.startswith("Question: The loss of an untrained model")
    assert "A model answer" not in printed and checks.answers.ANSWERS["04"][1][:40] not in printed.replace("\n", " ")
    assert "for your instructor" in printed
