"""A lesson's start-up: which profile runs and why, its folders, its model, where its figures and metrics go.

Each notebook starts with one call, after its papermill parameters cell:

    lesson = course.start("07_zero_shot", profile, profile_reason=profile_reason, data_dir=data_dir,
                          out_dir=out_dir, seed=seed, interactive=interactive)
    model, preprocess = lesson.load_model()
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import plots
from .profiles import Profile, describe, get_profile
from .models import load_clip
from .training.recipes import RECIPES, early_checkpoint_path, load_model
from .sources import TestSets, zero_shot_test_sets


def project_root(here=None) -> Path | None:
    """The nearest folder at or above `here` (default: the working directory) that holds the kit (clip_helpers/),
    or None. Jupyter starts a kernel in the notebook's folder: notebooks/, outputs/student/, a student's copy."""
    here = Path.cwd() if here is None else Path(here)
    return next((folder for folder in (here, *here.parents) if (folder / "clip_helpers").is_dir()), None)


def project_path(path) -> Path:
    """A relative path taken from the project root wherever in the project a notebook runs (so every edition shares
    data/ and its caches); outside a project (Colab, a lone notebook) from the working directory."""
    path = Path(path)
    root = project_root()
    if not path.is_absolute() and root is not None:
        return root / path
    return path


SHARED_DATA = "CLIP_KIT_DATA_DIR"  # a grader's one pre-built data folder for every submission (README, "nbgrader")


def data_path(data_dir) -> Path:
    """The lesson's data folder: the folder $CLIP_KIT_DATA_DIR names when it is set and the notebook keeps its
    default "data" (every nbgrader submission then loads one pre-built cache instead of training its own), else
    project_path(data_dir). A data_dir the notebook sets itself wins over the variable."""
    shared = os.environ.get(SHARED_DATA)
    if not shared or Path(data_dir) != Path("data"):
        return project_path(data_dir)
    shared = Path(shared).expanduser()
    if not shared.is_absolute():
        raise ValueError(f"{SHARED_DATA}={shared} is a relative path, which each notebook would take from its own "
                         f"folder: give the shared data folder as an absolute path")
    if not shared.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}={shared} is not a folder: create it and build its cache once "
                                f"(README, \"nbgrader\"), or unset the variable to use the notebook's data_dir")
    print(f"data folder: {shared} (from {SHARED_DATA})")
    return shared


def save_metrics(out_dir, notebook: str, key: str, value, **details) -> dict:
    """Write <out_dir>/metrics/<notebook>.json: the notebook's key number (for run_notebooks' summary) and details."""
    path = Path(out_dir) / "metrics" / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"notebook": notebook, "key": key, "value": value, **details}
    path.write_text(json.dumps(record, indent=1, default=float))
    return record


# A class's pace, for the front matter's class-time estimate (notebook 00): assumptions, stated so they can be changed.
CLASS_PACE = dict(words_per_minute=100, code_lines_per_minute=4, minutes_per_exercise=10, minutes_per_open_question=5)
SOLUTION = re.compile(r"### BEGIN SOLUTION.*?### END SOLUTION", flags=re.DOTALL)
EXERCISE = re.compile(r"^### Exercise \d+\.\d+: (.*)$", flags=re.MULTILINE)


def notebook_content(path) -> dict:
    """What a notebook asks of a class: words of prose (model answers left out), lines of code to read and run
    (solutions, comments, blank lines and the install and parameters cells left out), exercises and open questions."""
    import nbformat

    content = dict(words=0, code_lines=0, exercises=0, open_questions=0)
    for cell in nbformat.read(path, as_version=4).cells:
        text = SOLUTION.sub("", cell.source)
        if cell.cell_type == "markdown":
            content["words"] += len(re.findall(r"\w+", text))
            for title in EXERCISE.findall(text):
                content["open_questions" if title.startswith("an open question") else "exercises"] += 1
        elif not {"install-kit", "parameters"} & set(cell.metadata.get("tags", [])):
            content["code_lines"] += sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    return content


def class_minutes(content: dict, pace: dict = CLASS_PACE) -> float:
    """Estimated class time of a notebook's `content` (notebook_content) at `pace` (CLASS_PACE's keys)."""
    return (content["words"] / pace["words_per_minute"] + content["code_lines"] / pace["code_lines_per_minute"]
            + content["exercises"] * pace["minutes_per_exercise"]
            + content["open_questions"] * pace["minutes_per_open_question"])


def run_times(out_dir) -> dict:
    """The wall time of each notebook's latest run by tools/run_notebooks.py into `out_dir` ({} if none recorded)."""
    path = Path(out_dir) / "run_times.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Lesson:
    """One notebook's run: its profile, folders and seed; its model once load_model() has loaded it."""
    notebook: str
    profile: Profile
    data_dir: Path
    out_dir: Path
    seed: int = 0
    interactive: bool = True
    training_history: pd.DataFrame | None = field(default=None, repr=False)  # the mini-CLIP's, when it was loaded

    @property
    def figures_dir(self) -> Path:
        return self.out_dir / "figures"

    def save_figure(self, fig, name: str) -> None:
        """Write the figure to <out_dir>/figures/<name>.png. Nothing is returned, so a cell that ends with this call
        shows the figure, not a path of this machine (the path is figures_dir / f"{name}.png")."""
        plots.save_figure(fig, name, self.figures_dir)

    def save_metrics(self, key: str, value, **details) -> dict:
        """Record the notebook's key number (and details) for run_notebooks' summary, and print it."""
        record = save_metrics(self.out_dir, self.notebook, key, value, profile=self.profile.name, **details)
        print(f"key number: {record['key']} = {record['value']}")
        return record

    def load_model(self, model_name: str | None = None):
        """(model, preprocess) of the profile (or `model_name`), saying which model runs where."""
        model_name = model_name or self.profile.model
        model, preprocess, self.training_history = load_model(model_name, self.data_dir, mini_recipe=self.profile.mini_recipe,
                                                              progress=self.interactive)
        print(f"{model_name} on {model.positional_embedding.device}: image tower {type(model.visual).__name__}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
        return model, preprocess

    def load_early_model(self):
        """The profile's mini-CLIP after its first training epoch (kept beside the final weights), in eval mode, to
        compare with the trained one; None for a pretrained profile or a cache without one. Call load_model() first
        (training keeps both)."""
        path = early_checkpoint_path(RECIPES[self.profile.mini_recipe], self.data_dir / "weights")
        if self.profile.pretrained or not path.is_file():
            return None
        model, _ = load_clip(str(path))
        return model.eval()

    def zero_shot_test_sets(self, preprocess) -> TestSets:
        """(datasets, class_names, templates): the profile's zero-shot test images, the same ones in every notebook
        that asks (07, 09): test_per_class images of each class of its zero-shot source, drawn with seed + 1."""
        return zero_shot_test_sets(self.profile.zeroshot_source, self.profile.test_per_class, data_dir=self.data_dir,
                                   transform=preprocess, seed=self.seed + 1)


def start(notebook: str, profile: str = "auto", profile_reason: str = "", data_dir="data", out_dir="outputs",
          seed: int = 0, interactive: bool = True) -> Lesson:
    """The lesson, its profile chosen and printed with the reason (tools/run_notebooks.py gives profile_reason)."""
    data_dir, out_dir = data_path(data_dir), project_path(out_dir)
    torch.manual_seed(seed)
    chosen, reason = get_profile(profile, data_dir)
    print(describe(chosen, profile_reason or reason))
    return Lesson(notebook, chosen, data_dir, out_dir, seed, interactive)
