"""Zero-shot classification: class prompts become a linear classifier over image features."""
import numpy as np
import torch

from .device import precision_name
from .features import encode_images
from .quantize import first_images, int8_image_tower
from .similarity import check_finite, normalize
from .text import encode_texts, fill, list_of_strings, same_captions


def check_classes_and_templates(class_names, templates) -> tuple[list[str], list[str]]:
    """The two lists, or an error for what would give identical classifier rows (a class never predicted)."""
    class_names, templates = list_of_strings(class_names, "class_names"), list_of_strings(templates, "templates")
    for template in templates:
        try:
            same = template.format("cat") == template.format("dog")
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(f"template {template!r} cannot be filled with a class name ({type(error).__name__}: "
                             f"{error}); write the name's place as {{}}, e.g. 'a photo of a {{}}.'") from error
        if same:
            raise ValueError(f"template {template!r} has no {{}} for the class name, so it gives every class the "
                             f"same text; write e.g. 'a photo of a {{}}.'")
    duplicates = [list(dict.fromkeys(class_names[i] for i in group)) for group in same_captions(class_names, templates)]
    if duplicates:
        raise ValueError(f"class_names repeats {', '.join(map(str, duplicates))} as CLIP's tokenizer reads them (it "
                         f"ignores case and spaces): repeated names get identical classifier rows, and only the first "
                         f"of each can ever be predicted. Rename or merge those classes.")
    return class_names, templates


@torch.no_grad()
def build_classifier(model, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """[n_classes, dim]: each class's template embeddings, normalised, averaged, renormalised."""
    class_names, templates = check_classes_and_templates(class_names, templates)
    texts = [fill(template, name) for name in class_names for template in templates]
    text_features = normalize(encode_texts(model, texts).float())
    per_class = text_features.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return normalize(per_class)


def logits(image_features: torch.Tensor, classifier: torch.Tensor, logit_scale=100.0) -> torch.Tensor:
    """[n_images, n_classes] logit_scale * cosines, in fp32 whatever the two dtypes (fp16 features from a GPU,
    an fp32 classifier); NaN or inf in either is refused (similarity.NonFiniteError)."""
    check_finite(image_features, "image_features", "the image tower")
    check_finite(classifier, "classifier", "the text tower (build_classifier)")
    return logit_scale * normalize(image_features.float()) @ classifier.float().T.to(image_features.device)


@torch.no_grad()
def predict(model, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """[n_images, n_classes] class probabilities for a batch of preprocessed images."""
    image_features = model.encode_image(images.to(model.positional_embedding.device))
    return logits(image_features, classifier.to(image_features.device), model.logit_scale.exp()).softmax(dim=-1)


def scores(image_features: torch.Tensor, labels, classifier: torch.Tensor) -> dict:
    """Top-1, top-5 and mean per-class recall (percent) and the confusion matrix, from image features.

    The mean per-class recall averages over the classes that have images (a class without any has no recall);
    the confusion matrix keeps a row and a column for every class of the classifier.
    """
    # imported here: sklearn takes about a second to import, and most lessons import this module without scoring
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score, top_k_accuracy_score

    labels = torch.as_tensor(labels).cpu().numpy()
    n_classes = len(classifier)
    class_logits = logits(image_features.cpu(), classifier.cpu()).numpy()
    predictions = class_logits.argmax(axis=1)
    k = min(5, n_classes)
    top5 = 1.0 if k == n_classes else top_k_accuracy_score(labels, class_logits, k=k, labels=range(n_classes))
    return {
        "top1": 100 * accuracy_score(labels, predictions),
        "top5": 100 * top5,
        "mean_per_class_recall": 100 * recall_score(labels, predictions, labels=np.unique(labels), average="macro",
                                                    zero_division=0),
        "confusion": confusion_matrix(labels, predictions, labels=range(n_classes)),
        "n": len(labels),
    }


def evaluate(model, loader, classifier: torch.Tensor, progress: bool = False, int8: bool = False,
             precision: str = "auto") -> dict:
    """Zero-shot scores over a loader of (images, labels); the class prompts are encoded once, before.

    `precision` is that of the image tower ("auto", "fp32", "bf16", "fp16"; see features.encode_images), and
    the result's "precision" says which ran ("fp32" is exactly model.encode_image in fp32).
    int8=True encodes the images with an int8 copy of a ViT image tower (clip_helpers.quantize), made
    once here and calibrated on the loader's first batch: faster on a CPU, and not exact; its other layers run in fp32 unless `precision` asks otherwise
    ("auto" means fp32 there), and the result says "int8" (or e.g. "int8+bf16").
    """
    if int8:
        model = int8_image_tower(model, first_images(loader))
        precision = "fp32" if precision == "auto" else precision
    image_features, labels = encode_images(model, loader, progress=progress, precision=precision)
    ran = precision_name(model.positional_embedding.device, precision)
    return scores(image_features, labels, classifier) | {"precision": ran if not int8 else
                                                          "int8" if ran == "fp32" else f"int8+{ran}"}
