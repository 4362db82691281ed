"""Check for notebook 10: recall@k, the retrieval benchmarks' score."""
import torch

from .. import retrieval
from .core import as_tensor, call, close, fail, fail_on_known_mistake, passed


def recall_cases() -> list:
    """(similarity [n_queries, n_gallery], positives bool, k): queries with one or several true partners, no ties."""
    generator = torch.Generator().manual_seed(10)
    cases = []
    for n_queries, n_gallery, k in [(12, 9, 1), (12, 9, 3), (20, 15, 5), (8, 30, 2)]:
        similarity = torch.rand(n_queries, n_gallery, generator=generator) * 2 - 1
        positives = torch.rand(n_queries, n_gallery, generator=generator) < 0.15
        positives[torch.arange(n_queries), torch.randint(n_gallery, (n_queries,), generator=generator)] = True
        cases.append((similarity, positives, k))
    return cases


RECALL_MISTAKES = {
    "partners": [("any", None),
                 ("first", "only the first true partner counts: a query is found when ANY of its partners is among "
                           "its top k (an image with five captions is found by one of them)."),
                 ("all", "you ask for ALL partners in the top k; the benchmarks count a query as found when ANY of "
                         "its partners is there.")],
    "order": [("descending", None),
              ("ascending", "you rank the least similar first: sort the similarities in descending order (largest "
                            "cosine = best match).")],
    "cut": [(0, None), (1, "off by one: you look at k+1 items; the top k are exactly k gallery items."),
            (-1, "off by one: you look at k-1 items (topk(k-1), or a slice that stops one short); the top k are "
                 "exactly k gallery items.")],
    "score": [("recall", None),
              ("precision", "that is precision@k, the fraction of the top k that are true partners; recall@k asks "
                            "only whether at least one true partner is among them.")],
    "unit": [("percent", None), ("fraction", "give a percentage (0-100), as retrieval_scores does.")],
}


def recall_variant(case, partners, order, cut, score, unit):
    similarity, positives, k = case
    top = (similarity if order == "descending" else -similarity).topk(min(k + cut, similarity.shape[1]), dim=1).indices
    in_top = torch.zeros_like(positives).scatter_(1, top, True)
    if score == "precision":
        precision = (positives & in_top).sum(dim=1).double().mean() / k
        return 100 * precision if unit == "percent" else precision
    if partners == "first":
        positives = torch.zeros_like(positives).scatter_(1, positives.int().argmax(dim=1, keepdim=True), True)
    found = (positives & in_top).any(dim=1) if partners != "all" else ((positives & ~in_top).sum(dim=1) == 0)
    recall = found.double().mean()
    return 100 * recall if unit == "percent" else recall


def check_recall_at_k(recall_at_k) -> None:
    """Check `recall_at_k(similarity, positives, k)` -> percent of queries (rows) with a true partner in their top k."""
    exercise = "recall_at_k"
    cases = recall_cases()
    outputs = [as_tensor(call(exercise, recall_at_k, s.clone(), p.clone(), k)) for s, p, k in cases]
    if any(output is None or output.numel() != 1 for output in outputs):
        fail(exercise, "return one number: the percentage of queries (rows) that have a true partner among their k "
                       "most similar gallery items.")
    outputs = [output.reshape(()) for output in outputs]
    expected = [retrieval.recall_at_k(s, p, ks=(k,))[k] for s, p, k in cases]
    if all(close(output, want) for output, want in zip(outputs, expected)):
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, RECALL_MISTAKES, recall_variant)
    fail(exercise, "for each row (a query) take the k gallery items with the largest similarity; the query is found "
                   "when positives is True for at least one of them; recall@k is the percentage of rows found.")
