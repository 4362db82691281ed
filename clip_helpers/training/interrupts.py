"""Stopping a run from outside: Ctrl-C, and SIGTERM, which `timeout`, job schedulers (Slurm, Kubernetes) and
torchrun send. Ctrl-C raises KeyboardInterrupt; SIGTERM, by default, ends a Python process at once and without
a word. Inside sigterm_raises it raises Terminated, a KeyboardInterrupt, so that the handlers which say where
the checkpoint is and how to resume (loop.fine_tune, the finetune and reproduce command lines) serve both.
"""
import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in its main thread, inside sigterm_raises)."""


def raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once, as by default
    raise Terminated("Stopped by SIGTERM.")


@contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises Terminated in the main thread, as Ctrl-C raises KeyboardInterrupt.

    It changes nothing off the main thread (only there may Python set a handler), nor where SIGTERM already has
    a handler other than the default (someone else's, or an outer sigterm_raises'); the old handler is back after.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped(interrupt=None) -> str:
    """How the run stopped, in words: "Stopped by SIGTERM." or "Interrupted." (Ctrl-C)."""
    return "Stopped by SIGTERM." if isinstance(interrupt, Terminated) else "Interrupted."


def exit_status(interrupt=None) -> int:
    """The shell's status for a process ended by the signal: 128 + its number (143 for SIGTERM, 130 for Ctrl-C)."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
