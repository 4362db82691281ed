"""The exercises' checks: check_<name>(your_function) compares it with the kit's reference and explains a mistake.

A check prints one "Correct" line and returns None, or raises ExerciseFailed with what to fix; it never shows
the reference's code. reveal("04") prints a notebook's open question, and its model answer where
CLIP_KIT_INSTRUCTOR=1 (an instructor's kernel).
"""
from .answers import question, reveal
from .core import ExerciseFailed
from .data import check_split
from .encoders import check_causal_mask
from .failures import check_naive_accumulated_loss, check_sigmoid_loss
from .geometry import check_modality_gap, check_threshold
from .losses import FLOOR_QUESTION, check_clip_loss, check_loss_floor, loss_floor
from .probe import check_k_shot
from .retrieval import check_recall_at_k
from .similarity import check_caption_probabilities, check_cosine_similarity, check_similarity_matrix
from .train import TinyCLIP, check_train_step
from .zeroshot import check_classifier, check_held_out_top1, check_top1

__all__ = ["ExerciseFailed", "FLOOR_QUESTION", "TinyCLIP", "check_caption_probabilities", "check_causal_mask",
           "check_classifier", "check_clip_loss", "check_cosine_similarity", "check_held_out_top1", "check_k_shot",
           "check_loss_floor", "check_modality_gap", "check_naive_accumulated_loss", "check_recall_at_k",
           "check_sigmoid_loss", "check_similarity_matrix", "check_split", "check_threshold", "check_top1", "check_train_step", "loss_floor", "question", "reveal"]
