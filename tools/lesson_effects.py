"""Each lesson's effect, computed as notebooks 03-07 compute it (the same package calls, the same examples and
seeds), for one mini-CLIP: tools/offline_world_report.py prints them for the trained, an early and a random model.

A saturated world shows itself here: loss_i and loss_t at 0, the same softmax at logit_scale 10 and 100, softmax
maxima of 1.00, a prompt ensemble that changes no verdict, the report's in-batch accuracy equal to top-1. 03, 04 and
06 show pairs whose captions differ by one word (sources.shared_word_examples, GRIDS), as the notebooks do offline.
"""
import torch

from clip_helpers import zeroshot
from clip_helpers.data import per_class_subset
from clip_helpers.features import encode_datasets, encode_images_and_texts
from clip_helpers.similarity import normalize, similarity_matrix
from clip_helpers.sources import shared_word_examples, zero_shot_test_sets
from clip_helpers.text import PROMPT, texts_from_labels
from clip_helpers.training import batches, evaluation
from clip_helpers.training.recipes import train_and_val_sets

# The offline profile's sizes the notebooks pass (profiles.PROFILES["offline"]): seed 0, examples drawn with seed + 1.
SEED, TEST_PER_CLASS, VAL_PER_CLASS, BATCH_SIZE = 0, 25, 4, 64
# The pairs each notebook shows offline (its shared_word_examples call): captions that differ by one word.
GRIDS = {"03": (["red", "orange", "yellow"], ["square", "cross"]),
         "04": (["red", "orange"], ["square", "triangle", "star", "cross"]),
         "06": (["blue", "purple"], ["circle", "square", "star", "heart"])}


def example_similarity(model, preprocess, notebook: str):
    """(image_features, text_features, labels, class_names) of notebook 03's, 04's or 06's offline examples."""
    images, labels, class_names = shared_word_examples(*GRIDS[notebook], seed=SEED + 1)
    image_features, text_features = encode_images_and_texts(model, preprocess, images,
                                                             texts_from_labels(class_names, PROMPT, labels))
    return image_features, text_features, labels, class_names


def temperature_effects(model, preprocess, data_dir=None) -> dict:
    """03: % of its 6 images whose own caption is the most similar; the softmax over the captions at 10 and 100 of
    the image whose two best cosines are closest (the one its temperature figure shows)."""
    similarity = similarity_matrix(*example_similarity(model, preprocess, "03")[:2])
    matched = (similarity.argmax(dim=1) == torch.arange(len(similarity))).float().mean().item() * 100
    top_two = similarity.topk(2, dim=1).values
    shown = int((top_two[:, 0] - top_two[:, 1]).argmin())
    p10, p100 = (10 * similarity[shown]).softmax(-1), (100 * similarity[shown]).softmax(-1)
    return {"03 matched (%)": matched, "03 smallest gap": (top_two[shown, 0] - top_two[shown, 1]).item(),
            "03 p_max at 10": p10.max().item(), "03 p_max at 100": p100.max().item(),
            "03 TV(10, 100)": 0.5 * (p10 - p100).abs().sum().item()}


def loss_effects(model, preprocess, data_dir=None) -> dict:
    """04: the two directions of the loss on its 8 examples at the learned logit_scale."""
    image_features, text_features, _, _ = example_similarity(model, preprocess, "04")
    logit_scale = model.logit_scale.exp().detach().float().cpu()
    logits = normalize(image_features) @ normalize(text_features).T * logit_scale
    targets = torch.arange(len(logits))
    loss_i = torch.nn.functional.cross_entropy(logits.T, targets).item()
    loss_t = torch.nn.functional.cross_entropy(logits, targets).item()
    return {"04 loss_i": loss_i, "04 loss_t": loss_t, "04 |loss_i - loss_t|": abs(loss_i - loss_t),
            "logit_scale": logit_scale.item()}


def softmax_effects(model, preprocess, data_dir=None) -> dict:
    """06: each of its 8 images' softmax over the captions: the top probability, the own caption's, and the share
    of the rest that goes to captions sharing a colour or a shape with the image."""
    image_features, text_features, labels, class_names = example_similarity(model, preprocess, "06")
    probabilities = (model.logit_scale.exp().item() * similarity_matrix(image_features, text_features)).softmax(-1)
    words = [set(class_names[label].split()) for label in labels]
    shared = torch.tensor([[len(a & b) > 0 for b in words] for a in words])
    elsewhere = probabilities * ~torch.eye(len(labels), dtype=torch.bool)
    top = probabilities.max(dim=1).values
    return {"06 mean max prob": top.mean().item(), "06 min max prob": top.min().item(),
            "06 own-caption prob": probabilities.diagonal().mean().item(),
            "06 rest to shared-word captions": (elsewhere * shared).sum().item() / elsewhere.sum().item()}


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
    """05: zero-shot top-1 and the report's in-batch score on the kit's validation batches (distinct classes) and on
    the report's batches of 8 (evaluation.report_inbatch_scores), on 05's validation set, before fine-tuning."""
    _, val_pool, pool = train_and_val_sets("shapes", preprocess, data_dir, None, None, seed=SEED + 2, split_name="all")
    val_set = per_class_subset(val_pool, VAL_PER_CLASS, seed=SEED)
    val_loader = batches.val_loader_for(val_set, BATCH_SIZE, seed=SEED)
    scores = evaluation.validation_scores(model, val_loader, zeroshot.build_classifier(model, pool.class_names,
                                                                                       pool.templates))
    report = evaluation.report_inbatch_scores(val_set, pool.class_names, pool.templates, seed=SEED)(model)
    return {"05 in-batch acc": scores["val_inbatch_acc"], "05 top-1": scores["val_top1"],
            "05 in-batch - top-1": scores["val_inbatch_acc"] - scores["val_top1"],
            "05 report in-batch": report["report_inbatch_acc"], "05 report ceiling": report["report_inbatch_max"],
            "05 report in-batch - top-1": report["report_inbatch_acc"] - scores["val_top1"]}


@torch.no_grad()
def lesson_effects(model, preprocess, data_dir="data") -> dict:
    """Every effect above for `model` (in eval mode), one flat dict."""
    model = model.eval()
    return {**temperature_effects(model, preprocess), **loss_effects(model, preprocess),
            **softmax_effects(model, preprocess), **in_batch_effects(model, preprocess, data_dir),
            **zero_shot_effects(model, preprocess, data_dir)}
