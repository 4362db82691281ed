"""What a fine-tuning run is given: its hyperparameters (TrainConfig), where it keeps its files (RunFolder),
and, for fine_tune_on and the command line, what it trains on (FineTuneData). Each is checked when it is made,
by clip_helpers.training.settings, so a bad value stops before any work."""
from dataclasses import dataclass, field

from .settings import SettingsError, config_problems, data_problems, run_folder_problems

NOT_RECORDED = {"recorded": False}  # a field that does not change what the run computes (checkpoints.describe_run)


@dataclass
class TrainConfig:
    """The hyperparameters of fine_tune (and the precision it runs at)."""
    class_names: list | None = None  # None: fine_tune_on takes the source's class names and templates
    templates: list = field(default_factory=lambda: ["{}"])  # "{}" is the report's bare class name
    eval_templates: list | None = None  # prompts of the zero-shot classifier; None: the training templates
    num_epochs: int = 5
    lr: float = 1e-5
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    amp: str | None = "auto"  # "auto": device.autocast's choice; None: fp32; "bfloat16"/"float16": forced
    int8_eval: bool = False  # validate with an int8 copy of a ViT image tower (CPU only; faster, not exact)
    accum_steps: int = 1  # chunks per step (GradCache): the batch stays the global batch, memory is one chunk's
    loss: str = "clip"  # "clip" (softmax over the batch) or "siglip" (sigmoid, with a learnable bias)
    progress: bool = field(default=True, metadata=NOT_RECORDED)

    def __post_init__(self):
        refuse("TrainConfig", config_problems(self), ValueError)


@dataclass
class RunFolder:
    """Where a run keeps its checkpoints (see clip_helpers.training.checkpoints), and how it may use the folder."""
    run_dir: str  # e.g. data/runs/caltech256
    resume: bool | str = False  # True: continue run_dir's run (refused if none); "auto": continue it if there is one
    overwrite: bool = False  # a new run may replace the run already in run_dir
    run_settings: dict | None = None  # what fine_tune cannot see (model name, dataset): recorded and checked on resume

    def __post_init__(self):
        refuse("RunFolder", run_folder_problems(self.resume, self.overwrite), SettingsError)
        self.run_dir = str(self.run_dir)


@dataclass
class FineTuneData:
    """What fine_tune_on trains: a model (a clip name, "mini" or a checkpoint file) on a source (a name or a
    folder), with the sizes of its splits and batches. batch_size is the global batch under torchrun."""
    model_name: str = "ViT-B/32"
    source: str = "caltech256"
    batch_size: int = 32
    train_size: int | None = 5000  # None: all of the split
    val_size: int | None = 1000
    workers: int = 0  # DataLoader worker processes
    data_dir: str = "data"
    device: str | None = None  # None: device.get_device()

    def __post_init__(self):
        refuse("FineTuneData", data_problems(self.batch_size, self.train_size, self.val_size, self.workers),
               SettingsError)


def refuse(what: str, problems: list[str], error=ValueError) -> None:
    if problems:
        raise error(f"{what}: {'; '.join(problems)}.")
