"""Checks for notebook 07: the prompt-ensemble classifier, and zero-shot top-1 in place of the report's evaluateModel."""
import torch

from .. import zeroshot
from ..similarity import normalize
from .core import as_tensor, call, close, fail, fail_on_known_mistake, passed


def reference_classifier(text_features: torch.Tensor) -> torch.Tensor:
    """What zeroshot.build_classifier does after encoding: normalise, mean over templates, renormalise."""
    return normalize(normalize(text_features).mean(dim=1))


def classifier_cases() -> list:
    """text_features[c, t]: template t filled with class c; templates of very different lengths."""
    generator = torch.Generator().manual_seed(7)
    cases = []
    for n_classes, n_templates, dim in [(3, 4, 5), (5, 2, 8), (2, 3, 4), (4, 1, 6)]:
        lengths = torch.linspace(0.2, 6.0, n_templates)[None, :, None]
        cases.append(lengths * torch.randn(n_classes, n_templates, dim, generator=generator))
    return cases


CLASSIFIER_MISTAKES = {
    "normalise first": [(True, None),
                        (False, "averaged before normalising: a template whose embedding happens to be long outweighs "
                                "the others; normalise each template's embedding first, then average.")],
    "average over": [(1, None),
                     (0, "averaged over classes instead of templates: average over dim=1 (the templates), keeping "
                         "one row per class.")],
    "renormalise": [(True, None),
                    (False, "not renormalised: the mean of unit vectors is shorter than 1; divide each class's mean "
                            "by its length so every class competes on direction alone.")],
}


def classifier_variant(text_features, **choice):
    features = normalize(text_features) if choice["normalise first"] else text_features
    features = features.mean(dim=choice["average over"])
    return normalize(features) if choice["renormalise"] else features


def check_classifier(classifier_from) -> None:
    """Check `classifier_from(text_features)`: [n_classes, n_templates, dim] -> the [n_classes, dim] classifier."""
    exercise = "prompt-ensemble classifier"
    cases = classifier_cases()
    outputs = [as_tensor(call(exercise, classifier_from, case.clone())) for case in cases]
    expected = [reference_classifier(case) for case in cases]
    if all(close(output, want) for output, want in zip(outputs, expected)):
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, CLASSIFIER_MISTAKES, classifier_variant)
    for output, want, case in zip(outputs, expected, cases):
        if output is None or output.shape != want.shape:
            got = "something that is not a tensor of numbers" if output is None else f"shape {tuple(output.shape)}"
            fail(exercise, f"for {case.shape[0]} classes, {case.shape[1]} templates and dimension {case.shape[2]} the "
                           f"classifier has one row per class, shape {tuple(want.shape)}; you returned {got}.")
    fail(exercise, "every row should be the renormalised mean of the class's normalised template embeddings; yours "
                   "differ. Check which dimension you average over and when you normalise.")


# ---------------------------------------------------------------- top-1, the fix of evaluateModel

def top1_cases() -> list:
    """(image_features, labels, classifier): more images than classes, classes seen unevenly."""
    generator = torch.Generator().manual_seed(8)
    cases = []
    for n_images, n_classes in [(12, 4), (7, 7), (20, 3)]:
        classifier = normalize(torch.randn(n_classes, 6, generator=generator))
        labels = torch.randint(n_classes, (n_images,), generator=generator)
        # images near their class's row, some nearer another class: an accuracy neither 0 nor 100
        image_features = 3 * classifier[labels] + 1.2 * torch.randn(n_images, 6, generator=generator)
        cases.append((image_features, labels, classifier))
    return cases


TOP1_MISTAKES = {
    "target": [("labels", None),
               ("position", "that is the report's in-batch matching: it asks whether image i picks row i, but the "
                            "truth is its label: compare the predicted class with labels.")],
    "unit": [("percent", None), ("fraction", "give a percentage (0-100), as the kit's scores do.")],
}


def top1_variant(case, target, unit):
    image_features, labels, classifier = case
    predictions = (image_features @ classifier.T).argmax(dim=1)
    truth = labels if target == "labels" else torch.arange(len(labels))
    accuracy = (predictions == truth).double().mean()
    return 100 * accuracy if unit == "percent" else accuracy


def check_top1(top1) -> None:
    """Check `top1(image_features, labels, classifier)` -> zero-shot top-1 accuracy in percent."""
    exercise = "top-1 accuracy"
    cases = top1_cases()
    outputs = [as_tensor(call(exercise, top1, *(part.clone() for part in case))) for case in cases]
    expected = [zeroshot.scores(*case)["top1"] for case in cases]
    if all(output is not None and output.numel() == 1 and close(output.reshape(()), want)
           for output, want in zip(outputs, expected)):
        return passed(exercise)
    if any(output is None or output.numel() != 1 for output in outputs):
        fail(exercise, "return one number: the percentage of images whose highest-scoring class is their label.")
    outputs = [output.reshape(()) for output in outputs]
    fail_on_known_mistake(exercise, outputs, cases, TOP1_MISTAKES, top1_variant)
    fail(exercise, "the prediction of an image is the class whose classifier row has the largest dot product with "
                   "its features (argmax over classes, dim=1); top-1 is the percentage of predictions equal to labels.")


# ---------------------------------------------------------------- notebook 08: top-1 on the held-out pairs

def held_out_cases() -> list:
    """(image_features, labels, classifier): images of a few classes only, some nearer a class they are not."""
    generator = torch.Generator().manual_seed(18)
    cases = []
    for n_images, n_classes, n_present in [(15, 8, 3), (12, 6, 2), (20, 10, 4)]:
        classifier = normalize(torch.randn(n_classes, 6, generator=generator))
        labels = torch.randint(n_present, (n_images,), generator=generator)
        # pulled towards a class that is not among the labels, as a held-out pair towards a seen one
        decoy = labels + n_present
        image_features = (3 * classifier[labels] + 2.6 * classifier[decoy]
                          + 0.5 * torch.randn(n_images, 6, generator=generator))
        cases.append((image_features, labels, classifier))
    return cases


HELD_OUT_MISTAKES = {
    "classes": [("all", None),
                ("present", "you let the model choose only among the classes present in labels (the held-out pairs): "
                            "a 1-in-6 question instead of 1-in-36. The model does not know which pairs are new; "
                            "predict with the argmax over ALL rows of the classifier.")],
    "unit": [("percent", None), ("fraction", "give a percentage (0-100), as the kit's scores do.")],
}


def held_out_variant(case, classes, unit):
    image_features, labels, classifier = case
    scores = image_features @ classifier.T
    if classes == "present":
        present = torch.zeros(len(classifier), dtype=torch.bool)
        present[labels.unique()] = True
        scores = scores.masked_fill(~present, float("-inf"))
    accuracy = (scores.argmax(dim=1) == labels).double().mean()
    return 100 * accuracy if unit == "percent" else accuracy


def check_held_out_top1(held_out_top1) -> None:
    """Check `held_out_top1(image_features, labels, classifier)`: top-1 (%) of held-out images among ALL classes."""
    exercise = "held-out top-1"
    cases = held_out_cases()
    outputs = [as_tensor(call(exercise, held_out_top1, *(part.clone() for part in case))) for case in cases]
    if any(output is None or output.numel() != 1 for output in outputs):
        fail(exercise, "return one number: the percentage of images whose highest-scoring class is their label.")
    outputs = [output.reshape(()) for output in outputs]
    if all(close(output, zeroshot.scores(*case)["top1"]) for output, case in zip(outputs, cases)):
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, HELD_OUT_MISTAKES, held_out_variant)
    fail(exercise, "the prediction is the argmax of image_features @ classifier.T over all classes (dim=1); top-1 is "
                   "the percentage of predictions equal to labels.")
