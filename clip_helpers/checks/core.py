"""What every check shares: calling the student's function, comparing, naming the mistake, saying "correct".

A check compares the student's output with the kit's reference on several inputs. When they differ it tries
the usual mistakes (each a small variant of the reference, described by a hint) and reports the hints of the
simplest variant that reproduces the student's outputs on every input. Nothing here prints source code.
"""
import copy
from contextlib import contextmanager
from itertools import product

import numpy as np
import torch


class ExerciseFailed(AssertionError):
    """Raised by a check with a message a student can act on."""

    def _render_traceback_(self):
        # IPython calls this instead of printing the frames: the student sees the hint, not the check's code.
        return [f"\x1b[31mNot yet:\x1b[0m {self}"]


def passed(exercise: str) -> None:
    """Print the verdict and return None: an autograder (nbgrader) counts a test cell that raises nothing as passed,
    and reads a returned value as the cell's score (True is not one)."""
    print(f"Correct: {exercise} agrees with the reference on every test input.")


def fail(exercise: str, message: str):
    raise ExerciseFailed(f"{exercise}: {message}")


def call(exercise: str, function, *args, repeat: bool = True, inputs=None, **kwargs):
    """The student's function applied to the inputs, or ExerciseFailed saying what it raised and on what.

    It also fails when the function changes one of its `inputs` (positions, all by default) in place, each
    compared with an untouched copy, and, with `repeat`, when a second call on copies of the same inputs gives a
    different result.
    """
    if not callable(function):
        fail(exercise, f"pass the function itself (check_...(my_function)), not {type(function).__name__}.")
    inputs = range(len(args)) if inputs is None else inputs
    untouched = {position: copy.deepcopy(args[position]) for position in inputs}
    pristine = copy.deepcopy(args) if repeat else None
    output = attempt(exercise, function, args, kwargs)
    for position, original in untouched.items():
        if not same(args[position], original):
            fail(exercise, f"your function changes its input in place (argument {position + 1}, "
                           f"{describe([original])}): the caller's tensor is not the same after the call. Compute "
                           f"into new tensors (out-of-place operations, no `x /= ...`, `x.add_()`, `x[...] = ...`).")
    if repeat:
        again = attempt(exercise, function, pristine, kwargs)
        if not same(output, again):
            fail(exercise, f"two calls on the same input ({describe(pristine)}) returned different results: the "
                           f"function must depend only on its arguments (no global counters, no unseeded randomness, "
                           f"no state kept between calls).")
    return output


def attempt(exercise: str, function, args, kwargs):
    try:
        return function(*args, **kwargs)
    except NotImplementedError as error:  # the student edition's stub: its message names the cell to fill in
        fail(exercise, f"not written yet: replace the `raise NotImplementedError(...)` line with your code."
                       f"{chr(10) + '  (' + str(error) + ')' if str(error) else ''}")
    except ExerciseFailed:
        raise
    except Exception as error:  # any error of the student's code is reported in words, with the input it got
        fail(exercise, f"your function raised {type(error).__name__}: {error}\n  on the input {describe(args)}.")


def same(a, b) -> bool:
    """Equal values, exactly: tensors and arrays elementwise (nan equal to nan), containers item by item."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        a, b = as_tensor(a), as_tensor(b)
        return a is not None and b is not None and a.shape == b.shape and bool(torch.equal(a.nan_to_num(7.5),
                                                                                          b.nan_to_num(7.5)))
    if hasattr(a, "indices") and hasattr(b, "indices"):  # two torch Subsets
        return same(list(a.indices), list(b.indices))
    try:
        return a is b or bool(a == b) or (a != a and b != b)
    except Exception:  # values with no truth value for ==: told apart by the checks' own comparisons
        return True


def describe(args) -> str:
    parts = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append(f"a {arg.dtype} tensor of shape {tuple(arg.shape)}")
        elif isinstance(arg, (list, tuple)) and len(arg) > 8:
            parts.append(f"a {type(arg).__name__} of {len(arg)} items")
        elif isinstance(arg, (int, float, str, list, tuple)):
            parts.append(repr(arg))
        else:  # a model, an optimizer: their repr runs over many lines
            parts.append(f"a {type(arg).__name__}")
    return ", ".join(parts)


def as_tensor(value) -> torch.Tensor | None:
    """The value as a float64 tensor, or None when it is not made of numbers."""
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().to(torch.float64)
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def first_mismatch(outputs, expected) -> int | None:
    """The index of the first output not close to its expected value; None when every one is."""
    return next((i for i, (output, want) in enumerate(zip(outputs, expected)) if not close(output, want)), None)


def close(actual, expected, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Same shape and values (nan counts as equal to nan)."""
    actual, expected = as_tensor(actual), as_tensor(expected)
    if actual is None or expected is None or actual.shape != expected.shape:
        return False
    return bool(torch.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True))


def variants(options: dict) -> list:
    """Every combination of the options, fewest mistakes first.

    options: {axis: [(value, hint), ...]}, the first value of each axis is the right one (hint None).
    Returns [(choice, hints)], choice a dict {axis: value}.
    """
    axes = list(options)
    combos = []
    for picks in product(*(range(len(options[axis])) for axis in axes)):
        choice = {axis: options[axis][i][0] for axis, i in zip(axes, picks)}
        hints = [options[axis][i][1] for axis, i in zip(axes, picks) if i > 0]
        combos.append((sum(i > 0 for i in picks), choice, hints))
    combos.sort(key=lambda combo: combo[0])
    return [(choice, hints) for _, choice, hints in combos[1:]]  # the first is the right answer itself


@contextmanager
def one_thread():
    """Tensors of a few numbers: extra threads only wait for a busy CPU (30x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def diagnose(outputs: list, cases: list, options: dict, compute) -> list | None:
    """Hints of the simplest mistake that gives the student's `outputs` on every case, or None if none does.

    compute(case, **choice) is the reference computation with the choice's mistakes in it.
    """
    with one_thread():
        for choice, hints in variants(options):
            try:
                if all(close(output, compute(case, **choice)) for output, case in zip(outputs, cases)):
                    return hints
            except RuntimeError:  # a shape mistake this case cannot even express: not this variant
                continue
    return None


def explain(hints: list) -> str:
    return hints[0] if len(hints) == 1 else "several things:\n" + "\n".join(f"  - {hint}" for hint in hints)


def fail_on_known_mistake(exercise: str, outputs: list, cases: list, options: dict, compute):
    """Fail with the hints of the simplest known mistake that gives the student's `outputs` (diagnose); return
    when none does, so the check can say what the right computation is."""
    hints = diagnose(outputs, cases, options, compute)
    if hints:
        fail(exercise, explain(hints))
