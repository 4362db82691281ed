"""Each lesson's effect, computed as notebooks 03-07 compute it (the same package calls, the same examples and
seeds), for one mini-CLIP: tools/offline_world_report.py prints them for the trained, an early and a random model.

A saturated world shows itself here: loss_i and loss_t at 0, the same softmax at logit_scale 10 and 100, softmax
maxima of 1.00, a prompt ensemble that changes no verdict, in-batch accuracy equal to top-1.
"""
import torch

from clip_helpers import zeroshot
from clip_helpers.data import per_class_subset
from clip_helpers.features import encode_datasets, encode_images_and_texts
from clip_helpers.similarity import normalize, similarity_matrix
from clip_helpers.sources import examples, zero_shot_test_sets
from clip_helpers.text import PROMPT, texts_from_labels
from clip_helpers.training import batches, evaluation
from clip_helpers.training.recipes import train_and_val_sets

# The offline profile's sizes the notebooks pass (profiles.PROFILES["offline"]): seed 0, examples drawn with seed + 1.
SEED, TEST_PER_CLASS, VAL_PER_CLASS, BATCH_SIZE = 0, 25, 4, 64


def example_similarity(model, preprocess, n: int, data_dir):
    images, labels, class_names = examples("shapes", n, data_dir, seed=SEED + 1)
    image_features, text_features = encode_images_and_texts(model, preprocess, images,
                                                             texts_from_labels(class_names, PROMPT, labels))
    return image_features, text_features


def temperature_effects(model, preprocess, data_dir) -> dict:
    """03: % of 6 images whose own caption is the most similar; image 0's softmax over the captions at 10 and 100."""
    similarity = similarity_matrix(*example_similarity(model, preprocess, 6, data_dir))
    matched = (similarity.argmax(dim=1) == torch.arange(len(similarity))).float().mean().item() * 100
    p10, p100 = (10 * similarity[0]).softmax(-1), (100 * similarity[0]).softmax(-1)
    return {"03 matched (%)": matched, "03 p_max at 10": p10.max().item(), "03 p_max at 100": p100.max().item(),
            "03 TV(10, 100)": 0.5 * (p10 - p100).abs().sum().item()}


def loss_effects(model, preprocess, data_dir) -> dict:
    """04: the two directions of the loss on 8 examples at the learned logit_scale; 06: their softmax maxima."""
    image_features, text_features = example_similarity(model, preprocess, 8, data_dir)
    logit_scale = model.logit_scale.exp().detach().float().cpu()
    logits = normalize(image_features) @ normalize(text_features).T * logit_scale
    targets = torch.arange(len(logits))
    probabilities = logits.softmax(dim=-1)
    return {"04 loss_i": torch.nn.functional.cross_entropy(logits.T, targets).item(),
            "04 loss_t": torch.nn.functional.cross_entropy(logits, targets).item(),
            "logit_scale": logit_scale.item(),
            "06 mean max prob": probabilities.max(dim=1).values.mean().item(),
            "06 min max prob": probabilities.max(dim=1).values.min().item(),
            "06 own-caption prob": probabilities.diagonal().mean().item()}


def zero_shot_effects(model, preprocess, data_dir) -> dict:
    """07: top-1 of seen and held-out pairs with the ensemble, its gain over one prompt and the verdicts it changes."""
    test_sets, class_names, templates = zero_shot_test_sets("shapes", TEST_PER_CLASS, data_dir=data_dir,
                                                            transform=preprocess, seed=SEED + 1)
    features = encode_datasets(model, test_sets, cache_dir=None, label="effects")
    one, ensemble = (zeroshot.build_classifier(model, class_names, prompts) for prompts in ([PROMPT], templates))
    row = {}
    for name, short in (("seen pairs", "seen"), ("held-out pairs", "held-out")):
        image_features, labels = features[name]
        right = {key: (zeroshot.logits(image_features, classifier).argmax(dim=-1) == labels).float()
                 for key, classifier in (("one", one), ("ensemble", ensemble))}
        row[f"07 {short} top-1"] = 100 * right["ensemble"].mean().item()
        row[f"07 {short} ensemble - one"] = 100 * (right["ensemble"] - right["one"]).mean().item()
        row[f"07 {short} verdicts changed"] = int((right["ensemble"] != right["one"]).sum())
    return row


def in_batch_effects(model, preprocess, data_dir) -> dict:
    """05: the report's in-batch accuracy and zero-shot top-1 on 05's validation set, before fine-tuning."""
    _, val_pool, pool = train_and_val_sets("shapes", preprocess, data_dir, None, None, seed=SEED + 2, split_name="all")
    val_loader = batches.val_loader_for(per_class_subset(val_pool, VAL_PER_CLASS, seed=SEED), BATCH_SIZE, seed=SEED)
    scores = evaluation.validation_scores(model, val_loader, zeroshot.build_classifier(model, pool.class_names,
                                                                                       pool.templates))
    return {"05 in-batch acc": scores["val_inbatch_acc"], "05 top-1": scores["val_top1"],
            "05 in-batch - top-1": scores["val_inbatch_acc"] - scores["val_top1"]}


@torch.no_grad()
def lesson_effects(model, preprocess, data_dir="data") -> dict:
    """Every effect above for `model` (in eval mode), one flat dict."""
    model = model.eval()
    return {**temperature_effects(model, preprocess, data_dir), **loss_effects(model, preprocess, data_dir),
            **in_batch_effects(model, preprocess, data_dir), **zero_shot_effects(model, preprocess, data_dir)}
