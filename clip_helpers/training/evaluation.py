"""Validation during fine-tuning: zero-shot top-1 on held-back images, the loss, and the report's in-batch score."""
import torch
from torch.utils.data import DataLoader, Subset

from ..device import amp_context
from ..losses import clip_loss, inbatch_ceiling, loss_floor
from ..quantize import first_images, int8_image_tower
from ..siglip import siglip_loss
from ..zeroshot import build_classifier, scores

REPORT_BATCH_SIZE = 8  # the report's batch size (replication.report.splitTrainValidation)


def inbatch_accuracy(logits_per_image: torch.Tensor) -> float:
    """The report's evaluateModel score for one batch (a count): is image i's best caption caption i?

    Exactly as the report computes it: its "text" half takes argmax(logits_per_text, dim=0), which is the
    image half again (logits_per_text is the transpose), so both halves count image->text matches. With
    several images of one class in a batch their captions are identical and at most one of them can win:
    this measures in-batch matching, not classification.
    """
    truth = torch.arange(len(logits_per_image), device=logits_per_image.device)
    images_right = (logits_per_image.argmax(dim=1) == truth).sum().item()
    texts_right = (logits_per_image.T.argmax(dim=0) == truth).sum().item()
    return (images_right + texts_right) / 2


@torch.inference_mode()
def validation_scores(model, val_loader, classifier: torch.Tensor, amp: str | None = "auto",
                      int8: bool = False, sigmoid_loss=None) -> dict[str, float]:
    """val_loss, val_top1 (zero-shot, %) and val_inbatch_acc (the report's metric, %) over `val_loader`,
    with what the batches allow: val_loss_floor (losses.loss_floor, averaged over images) and val_inbatch_max
    (%, losses.inbatch_ceiling). Images of one class in a batch share one caption, so the loss cannot reach 0
    nor the in-batch score 100%; batches.val_loader_for's batches hold distinct classes (floor 0, ceiling 100%).

    sigmoid_loss: a run trained with SigLIP's loss (siglip.SigmoidLoss) is validated with it: val_loss is the
    sigmoid loss with the model's temperature and that module's learned bias (same-class pairs positive), so
    it compares with train_loss. loss_floor is a bound on the softmax loss only, so val_loss_floor is then NaN.

    The class prompts were encoded once into `classifier`; row c also serves as the caption of class c.
    int8=True encodes the images with clip_helpers.quantize.int8_image_tower(model), made once here and
    calibrated on the loader's first batch.
    """
    device = model.positional_embedding.device
    logit_scale = model.logit_scale.exp().float()
    if int8:
        model = int8_image_tower(model, first_images(val_loader))
    classifier = classifier.to(device)
    all_features, all_labels, total_loss, inbatch_right, total_floor, inbatch_max = [], [], 0.0, 0.0, 0.0, 0.0
    for images, labels in val_loader:
        with amp_context(device, amp):
            image_features = model.encode_image(images.to(device)).float()
        labels = labels.to(device)
        text_features = classifier[labels]
        # The plain function, not the module: under torchrun every process validates the same batches, and the
        # module would gather them from all processes (each pair counted world_size times).
        loss = (clip_loss(image_features, text_features, logit_scale, labels) if sigmoid_loss is None else
                siglip_loss(image_features, text_features, logit_scale, sigmoid_loss.bias.float(), labels))
        total_loss += loss.item() * len(labels)
        logits = logit_scale * (image_features / image_features.norm(dim=-1, keepdim=True)) @ text_features.T
        inbatch_right += inbatch_accuracy(logits)
        total_floor += loss_floor(labels) * len(labels)
        inbatch_max += inbatch_ceiling(labels) * len(labels)
        all_features.append(image_features.cpu())
        all_labels.append(labels.cpu())
    labels = torch.cat(all_labels)
    floor = total_floor / len(labels) if sigmoid_loss is None else float("nan")
    return {"val_loss": total_loss / len(labels), "val_loss_floor": floor,
            "val_top1": scores(torch.cat(all_features), labels, classifier.cpu())["top1"],
            "val_inbatch_acc": 100 * inbatch_right / len(labels), "val_inbatch_max": 100 * inbatch_max / len(labels)}


def report_val_loader(dataset, batch_size: int = REPORT_BATCH_SIZE, seed: int = 0) -> DataLoader:
    """The report's validation batches: the images shuffled once (the report shuffles its list before slicing it),
    then read in order (its DataLoader has shuffle=False) in batches of 8. A batch holds 8 of the classes, and
    classes repeat in it by chance (with 36 classes, most batches of 8 hold a repeat)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False)


def report_inbatch_scores(dataset, class_names: list[str], templates: list[str], batch_size: int = REPORT_BATCH_SIZE,
                          seed: int = 0, amp: str | None = "auto"):
    """A function of the model for fine_tune's extra_scores: the report's in-batch score on the report's batches
    (report_val_loader), report_inbatch_acc (%), and report_inbatch_max (%), its ceiling on those batches (a class
    repeated in a batch shares one caption, losses.inbatch_ceiling)."""
    loader = report_val_loader(dataset, batch_size, seed)

    def report_scores(model) -> dict[str, float]:
        classifier = build_classifier(model.eval(), class_names, templates)
        scored = validation_scores(model, loader, classifier, amp)
        return {"report_inbatch_acc": scored["val_inbatch_acc"], "report_inbatch_max": scored["val_inbatch_max"]}
    return report_scores
