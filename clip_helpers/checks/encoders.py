"""Check for notebook 02: the text transformer's causal mask (which token may attend to which)."""
import torch

from .core import as_tensor, call, close, fail, passed


def reference_mask(n: int) -> torch.Tensor:
    """[n, n] bool: row i (the token being encoded) may attend to column j (a token) when j <= i."""
    return torch.ones(n, n).tril().bool()


MASK_MISTAKES = [
    (lambda n: torch.ones(n, n).triu(), "transposed: row i may attend to columns 0..i (itself and the tokens before "
                                        "it), so the allowed entries sit on and below the diagonal (tril), not above."),
    (lambda n: torch.ones(n, n).tril(1), "one diagonal too many: tril(1) also lets each token see the token just "
                                         "after it; a token may attend to itself and the tokens before it only."),
    (lambda n: torch.ones(n, n).tril(-1), "the diagonal is missing: a token may attend to itself (j <= i, not j < i); "
                                          "otherwise the first token attends to nothing at all."),
    (lambda n: torch.ones(n, n), "no mask: every token may attend to every other, so a token would see the words "
                                 "after it; allow only j <= i."),
    (lambda n: torch.eye(n), "only the diagonal: each token may attend to itself AND every token before it."),
]


def check_causal_mask(causal_mask) -> None:
    """Check `causal_mask(n)` -> [n, n] (bool or 0/1): True where token i may attend to token j, on n = 1, 2, 5, 9."""
    exercise = "causal_mask"
    sizes = [1, 2, 5, 9]
    outputs = [as_tensor(call(exercise, causal_mask, n)) for n in sizes]
    for output, n in zip(outputs, sizes):
        if output is None or output.shape != (n, n):
            got = "something that is not a tensor of numbers" if output is None else f"shape {tuple(output.shape)}"
            fail(exercise, f"for {n} tokens the mask is an [{n}, {n}] matrix (row: the token being encoded, column: "
                           f"the token it looks at); you returned {got}.")
        if torch.isinf(output).any() or (output < -1e3).any():
            fail(exercise, "that is the additive form clip's transformer adds to the attention scores (0 where "
                           "allowed, -inf or a large negative number such as -1e9 where not); here return True (or 1) where attending is allowed, False "
                           "(or 0) where it is not.")
    if all(close(output, reference_mask(n)) for output, n in zip(outputs, sizes)):
        return passed(exercise)
    for mistake, hint in MASK_MISTAKES:
        if all(close(output, mistake(n)) for output, n in zip(outputs[1:], sizes[1:])):
            fail(exercise, hint)
    n = sizes[-1]
    row, column = [int(x) for x in (outputs[-1] != reference_mask(n).double()).nonzero()[0]]
    allowed = "may not" if outputs[-1][row, column] else "may"
    fail(exercise, f"for {n} tokens entry [{row}, {column}] is wrong: token {row} {allowed} attend to token {column}. "
                   f"Row i is the token being encoded; it sees only what a reader has read by then.")
