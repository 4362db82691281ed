"""One process or several: asked once, at the top of fine_tune (and of fine_tune_on), and answered by an object
that does what differs between the two.

OneProcess does the plain thing everywhere: the model's own towers, clip_loss, the loader as it is, every file
written here; it imports nothing distributed. Several processes (torchrun's environment, or a process group
already joined) get clip_helpers.training.distributed's Several instead, imported only then.
"""
import os

import torch

from ..losses import clip_loss
from .checkpoints import run_folder


def several_processes() -> bool:
    """True under torchrun (WORLD_SIZE > 1) or once a process group of more than one process is joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class OneProcess:
    """fine_tune's view of a single process: the whole batch, the plain model and loss, one writer (itself)."""
    rank, world_size, local_rank, is_main = 0, 1, 0, True

    def __init__(self, device="cpu"):
        self.device = str(device)

    def shard(self, loader, seed: int):
        return loader

    def forward_for(self, model):
        """What train_step calls for the features: None, the model's own towers."""
        return None

    def loss(self, image_features, text_features, logit_scale, labels=None):
        return clip_loss(image_features, text_features, logit_scale, labels)

    def batch_labels(self, labels):
        return labels

    def own_part(self, items):
        return items

    def on_main(self, write, *args, **kwargs):
        return write(*args, **kwargs)

    def main_first(self, load, *args, **kwargs):
        return load(*args, **kwargs)

    def run_folder(self, run_dir, record, model, resume=False, overwrite=False):
        return run_folder(run_dir, record, model, resume, overwrite)


def processes_for(model):
    """The processes that train `model`: OneProcess on its device, or torchrun's (joined on first use)."""
    if not several_processes():
        return OneProcess(next(model.parameters()).device)
    from .distributed import Several
    return Several.for_model(model)


def processes_from_env(device=None):
    """The processes torchrun describes (joined now, one GPU each), or OneProcess on `device` without torchrun."""
    if not several_processes():
        return OneProcess(device or "cpu")
    from .distributed import Several
    return Several.from_env(device)


def is_main() -> bool:
    """True in the main process (rank 0) of a joined group, and in a single process."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def leave() -> None:
    """Leave torchrun's process group, if one was joined (nothing in a single process)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
