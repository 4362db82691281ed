"""Checks for notebook 03: cosine similarity by hand (the report's eq. 2) and as one matrix product."""
import math

import torch

from .. import similarity
from .core import as_tensor, call, close, fail, fail_on_known_mistake, passed


def vector_cases() -> list:
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(8, generator=generator, dtype=torch.float64)
    b = torch.randn(8, generator=generator, dtype=torch.float64)
    return [
        (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([4.0, -5.0, 6.0], dtype=torch.float64)),
        (3 * a / a.norm(), 0.5 * b / b.norm()),  # lengths 3 and 0.5, so forgetting either length shows
        (a, 2.5 * a),  # same direction: 1
        (a, -3 * a),  # opposite: -1
        (torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)),  # 0
        (torch.tensor([2.0], dtype=torch.float64), torch.tensor([-3.0], dtype=torch.float64)),  # one dimension
    ]


COSINE_MISTAKES = {
    "numerator": [("dot", None),
                  ("-dot", "the sign is flipped: two vectors pointing the same way must give +1, opposite ones -1."),
                  ("abs", "opposite vectors come out positive: keep the sign of the sum a_i*b_i (no abs)."),
                  ],
    "denominator": [("both", None),
                    ("one", "not normalised: you return the dot product sum(a_i*b_i); divide it by the lengths "
                            "of both vectors, sqrt(sum a_i^2) * sqrt(sum b_i^2)."),
                    ("a", "normalised only one side: you divide by the length of a but not by the length of b."),
                    ("b", "normalised only one side: you divide by the length of b but not by the length of a."),
                    ("squares", "you divide by the squared lengths sum(a_i^2) * sum(b_i^2): take their square roots."),
                    ("sums", "a vector's length is sqrt(sum a_i^2), not the sum of its entries."),
                    ],
    "result": [("cos", None),
               ("1-cos", "that is the cosine distance 1 - cos(a, b); return the similarity itself.")],
}


def cosine_variant(case, numerator, denominator, result):
    a, b = case
    dot = (a * b).sum()
    dot = {"dot": dot, "-dot": -dot, "abs": dot.abs()}[numerator]
    length_a, length_b = (a * a).sum().sqrt(), (b * b).sum().sqrt()
    dot = dot / {"both": length_a * length_b, "one": 1.0, "a": length_a, "b": length_b,
                 "squares": length_a ** 2 * length_b ** 2, "sums": a.sum() * b.sum()}[denominator]
    return dot if result == "cos" else 1 - dot


def check_cosine_similarity(cosine_similarity) -> None:
    """Check `cosine_similarity(a, b)` of two 1-D tensors (eq. 2) against the kit's, on six pairs and a zero vector."""
    exercise = "cosine_similarity"
    cases = vector_cases()
    outputs = []
    for a, b in cases:
        output = as_tensor(call(exercise, cosine_similarity, a.clone(), b.clone()))
        if output is None or output.numel() != 1:
            shape = "something that is not a number" if output is None else f"shape {tuple(output.shape)}"
            fail(exercise, f"for two vectors of length {len(a)} you returned {shape}; the cosine is one number: "
                           f"sum the products a_i*b_i before dividing by the lengths.")
        outputs.append(output.reshape(()))
    if not all(close(output, similarity.cosine_similarity(a, b)) for output, (a, b) in zip(outputs, cases)):
        fail_on_known_mistake(exercise, outputs, cases, COSINE_MISTAKES, cosine_variant)
        wrong = next(i for i, (a, b) in enumerate(cases) if not close(outputs[i], similarity.cosine_similarity(a, b)))
        a, b = cases[wrong]
        expected = similarity.cosine_similarity(a, b).item()
        a, b = [round(x, 3) for x in a.tolist()], [round(x, 3) for x in b.tolist()]
        fail(exercise, f"for a = {a} and b = {b} you return {outputs[wrong].item():.6g}, but the "
                       f"cosine is {expected:.6g}. Write eq. 2 term by term: "
                       f"sum(a_i*b_i) / (sqrt(sum a_i^2) * sqrt(sum b_i^2)).")
    check_zero_vector(exercise, cosine_similarity)
    return passed(exercise)


def check_zero_vector(exercise, cosine_similarity):
    """The cosine with a zero vector is 0/0: raising an error or returning nan are honest, a number is not."""
    zero, b = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    try:
        output = as_tensor(cosine_similarity(zero, b))
    except NotImplementedError:
        fail(exercise, "not written yet: replace the `raise NotImplementedError(...)` line with your code.")
    except Exception:  # raising on a zero vector is one of the two accepted answers
        return
    if output is not None and output.numel() == 1 and math.isnan(output.item()):
        return
    fail(exercise, f"with a = [0, 0, 0] you return {output.tolist() if output is not None else output}. A zero vector "
                   f"has no direction, so its cosine is 0/0, undefined: raise a ValueError (or let it come out as nan) "
                   f"rather than return a number that looks like a real similarity.")


def matrix_cases() -> list:
    generator = torch.Generator().manual_seed(6)

    def rows(n, dim, dtype=torch.float64):
        lengths = torch.linspace(0.5, 7.0, n, dtype=dtype)[:, None]  # rows of different lengths
        return lengths * torch.randn(n, dim, generator=generator, dtype=dtype)

    return [(rows(3, 5), rows(4, 5)), (rows(1, 4), rows(6, 4)), (rows(6, 3, torch.float32), rows(2, 3, torch.float32))]


MATRIX_MISTAKES = {
    "normalised": [("rows", None),
                   ("none", "features are not normalised: divide each row by its length (its norm over "
                            "the last dimension) before the product."),
                   ("images", "only the image features are normalised: divide each text's row by its length too."),
                   ("texts", "only the text features are normalised: divide each image's row by its length too."),
                   ("columns", "wrong axis: you scaled each column (dim=0) to length 1; each row, one image or one "
                               "text, must have length 1 (norm over dim=-1)."),
                   ],
    "layout": [("images x texts", None),
               ("transposed", "transposed: your rows are texts and your columns images; result[i, j] must be "
                              "cos(image i, text j), one row per image.")],
    "sign": [(1, None), (-1, "the sign is flipped: identical directions must give +1.")],
}


def matrix_variant(case, normalised, layout, sign):
    image_features, text_features = (f.to(torch.float64) for f in case)
    by_rows, by_columns = (lambda f: f / f.norm(dim=-1, keepdim=True)), (lambda f: f / f.norm(dim=0, keepdim=True))
    image_side, text_side = {"rows": (by_rows, by_rows), "none": (None, None), "images": (by_rows, None),
                             "texts": (None, by_rows), "columns": (by_columns, by_columns)}[normalised]
    image_features = image_side(image_features) if image_side else image_features
    text_features = text_side(text_features) if text_side else text_features
    product = sign * image_features @ text_features.T
    return product if layout == "images x texts" else product.T


def check_similarity_matrix(similarity_matrix) -> None:
    """Check `similarity_matrix(image_features, text_features)` -> [n_images, n_texts] cosines, on three shapes."""
    exercise = "similarity_matrix"
    cases = matrix_cases()
    outputs = [as_tensor(call(exercise, similarity_matrix, i.clone(), t.clone())) for i, t in cases]
    expected = [similarity.similarity_matrix(i, t).to(torch.float64) for i, t in cases]
    if all(close(output, want) for output, want in zip(outputs, expected)):
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, MATRIX_MISTAKES, matrix_variant)
    for output, want, (i, t) in zip(outputs, expected, cases):
        if output is None or output.shape != want.shape:
            got = "something that is not a tensor of numbers" if output is None else f"shape {tuple(output.shape)}"
            fail(exercise, f"for {len(i)} images and {len(t)} texts the result must have shape (n_images, n_texts) "
                           f"= {tuple(want.shape)}; you returned {got}.")
        if not close(output, want):
            row, column = divmod(int((output - want).abs().argmax()), want.shape[1])
            fail(exercise, f"for {len(i)} images and {len(t)} texts, entry [{row}, {column}] is "
                           f"{output[row, column].item():.4g} but the cosine of image {row} and text {column} is "
                           f"{want[row, column].item():.4g}. Normalise each row, then one matrix product.")


# ---------------------------------------------------------------- notebook 06: each image's softmax over captions

def probability_cases() -> list:
    """(similarity [n_images, n_texts], logit_scale): rectangular and square, scales 100, 14.3 and 2.5."""
    generator = torch.Generator().manual_seed(16)
    return [(torch.rand(3, 5, generator=generator) * 0.4, 100.0), (torch.rand(4, 4, generator=generator) * 2 - 1, 14.3),
            (torch.rand(6, 2, generator=generator) * 2 - 1, 2.5)]


PROBABILITY_MISTAKES = {
    "dim": [(-1, None), (0, "softmax over the wrong axis: each column (caption) sums to 1, so you spread each caption "
                            "over the images. Each image's row must sum to 1: softmax over dim=-1.")],
    "scale": [("times", None),
              ("none", "logit_scale not applied: the softmax of raw cosines (all within [-1, 1]) is nearly uniform; "
                       "multiply by logit_scale first."),
              ("exp", "logit_scale is already the multiplier (model.logit_scale.exp()): do not exponentiate it again."),
              ("divide", "multiply the cosines by logit_scale (1/temperature); dividing flattens the softmax."),
              ("after", "logit_scale applied after the softmax: scale the cosines, then take the softmax, so the "
                        "probabilities still sum to 1.")],
}


def probability_variant(case, dim, scale):
    similarity, logit_scale = case
    similarity = similarity.double()
    logits = {"times": logit_scale * similarity, "none": similarity, "after": similarity,
              "exp": torch.tensor(logit_scale, dtype=torch.float64).exp() * similarity,
              "divide": similarity / logit_scale}[scale]
    probabilities = logits.softmax(dim=dim)
    return logit_scale * probabilities if scale == "after" else probabilities


def check_caption_probabilities(caption_probabilities) -> None:
    """Check `caption_probabilities(similarity, logit_scale)` -> [n_images, n_texts], each row a softmax over captions."""
    exercise = "caption_probabilities"
    cases = probability_cases()
    outputs = [as_tensor(call(exercise, caption_probabilities, s.clone(), scale)) for s, scale in cases]
    expected = [probability_variant(case, -1, "times") for case in cases]
    if all(close(output, want) for output, want in zip(outputs, expected)):
        return passed(exercise)
    for output, want in zip(outputs, expected):
        if output is None or output.shape != want.shape:
            got = "something that is not a tensor of numbers" if output is None else f"shape {tuple(output.shape)}"
            fail(exercise, f"the probabilities have the similarity's shape {tuple(want.shape)} (one row per image, one "
                           f"column per caption); you returned {got}.")
    fail_on_known_mistake(exercise, outputs, cases, PROBABILITY_MISTAKES, probability_variant)
    fail(exercise, "each row should be the softmax, over the captions, of logit_scale times that image's cosines.")
