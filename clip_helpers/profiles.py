"""Profiles: how big a notebook run is and where its model and images come from, chosen once per notebook.

A profile is only sizes and sources. Notebooks read it at the top and pass explicit arguments down
(`batch_size=profile.batch_size`); nothing in the package takes a profile.
"""
import dataclasses
from pathlib import Path

from .downloads import archive_problem, can_reach, weights_cached, weights_file, weights_host

PRETRAINED = "ViT-B/32"


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and sources for one run of the notebooks.

    model: "ViT-B/32" (OpenAI's pretrained weights) or "mini" (the kit's mini-CLIP, trained on shapes).
    zeroshot_source / finetune_source: a source of clip_helpers.sources ("cifar10", "caltech256", "shapes").
    train_per_class / val_per_class / test_per_class: images of each class in the fine-tune train / validation
    split and in the zero-shot test set (the command line's train_size / val_size are totals).
    mini_recipe: which train_mini_clip recipe trains the mini-CLIP: "default" (minutes) or "smoke" (seconds).
    """
    name: str
    meaning: str
    model: str
    zeroshot_source: str
    finetune_source: str
    train_per_class: int
    val_per_class: int
    test_per_class: int
    batch_size: int
    num_epochs: int
    lr: float
    n_grid: int = 16
    mini_recipe: str = "default"

    @property
    def pretrained(self) -> bool:
        return self.model != "mini"


PROFILES = {
    "smoke": Profile(
        "smoke", "tiny sizes and a mini-CLIP trained for seconds, only to check that every cell runs: "
        "the numbers below mean nothing.",
        model="mini", zeroshot_source="shapes", finetune_source="shapes",
        train_per_class=2, val_per_class=1, test_per_class=2, batch_size=32, num_epochs=1, lr=1e-3, n_grid=8,
        mini_recipe="smoke",
    ),
    "offline": Profile(
        "offline", "no network: the kit's mini-CLIP (a few million parameters, most of them its token embedding), trained "
        "from scratch on coloured shapes on this machine. Numbers are about that tiny model on shapes, not "
        "OpenAI's CLIP on photos.",
        model="mini", zeroshot_source="shapes", finetune_source="shapes",
        train_per_class=8, val_per_class=4, test_per_class=25, batch_size=64, num_epochs=5, lr=5e-4, n_grid=16,
    ),
    "quick": Profile(
        "quick", "OpenAI's pretrained ViT-B/32 on small CIFAR-10 subsets (see the README for its time on a CPU): "
        "real CLIP numbers, but from a few hundred images, so expect a few points of noise.",
        model=PRETRAINED, zeroshot_source="cifar10", finetune_source="cifar10",
        train_per_class=40, val_per_class=20, test_per_class=100, batch_size=32, num_epochs=2, lr=1e-5, n_grid=16,
    ),
    "full": Profile(
        "full", "the report's reproduction on a GPU: pretrained ViT-B/32, zero-shot on the whole CIFAR-10 test "
        "set, fine-tuning on about 5,000 Caltech-256 images (20 per class) with about 1,000 for validation, as in "
        "the report.",
        model=PRETRAINED, zeroshot_source="cifar10", finetune_source="caltech256",
        train_per_class=20, val_per_class=4, test_per_class=1000, batch_size=32, num_epochs=10, lr=1e-5, n_grid=16,
    ),
}


def choose_auto(data_dir="data") -> tuple[str, str]:
    """("quick" | "offline", why): quick when the pretrained weights are cached (a complete archive) or their
    host answers; a damaged cached file is named in the reason and does not count as cached."""
    download_root = Path(data_dir) / "weights"
    path = weights_file(PRETRAINED, download_root)
    problem = archive_problem(path) if weights_cached(PRETRAINED, download_root) else None
    if weights_cached(PRETRAINED, download_root) and problem is None:
        return "quick", f"the {PRETRAINED} weights are cached in {path}"
    damaged = f"the cached {path} is unusable ({problem}); " if problem else ""
    host = weights_host(PRETRAINED)
    if can_reach(host):
        return "quick", f"{damaged}{host} is reachable, so the {PRETRAINED} weights can be downloaded"
    return "offline", (f"{damaged}the {PRETRAINED} weights are not in {download_root}/ and {host} cannot be reached "
                       f"(no internet)")


SIZE_FIELDS = ("train_per_class", "val_per_class", "test_per_class", "batch_size", "num_epochs", "n_grid")


def with_sizes(profile: Profile, sizes: str) -> Profile:
    """The profile with some sizes changed, from "test_per_class=30,num_epochs=1"; its meaning says which and that
    its numbers are not the named profile's."""
    changes = {}
    for item in filter(None, sizes.split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in SIZE_FIELDS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"Cannot read {item!r} in {sizes!r}: write size=positive integer, sizes among {SIZE_FIELDS}")
        changes[key.strip()] = int(value)
    note = ", ".join(f"{key}={value}" for key, value in changes.items())
    return dataclasses.replace(profile, **changes, meaning=f"{profile.meaning} SIZES CHANGED ({note}): the "
                               f"{profile.name} profile's code path on fewer images than the {profile.name} profile uses.")


def get_profile(name: str = "auto", data_dir="data") -> tuple[Profile, str]:
    """(Profile, reason): one of PROFILES, or for "auto" quick/offline with the reason it was chosen.

    "full:train_per_class=1,val_per_class=1" is the full profile with those sizes changed (with_sizes).
    """
    name, _, sizes = name.partition(":")
    if sizes:
        profile, reason = get_profile(name, data_dir)
        return with_sizes(profile, sizes), f"{reason}, with sizes {sizes}"
    if name == "auto":
        chosen, why = choose_auto(data_dir)
        return PROFILES[chosen], f'"auto" chose {chosen}: {why}'
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}; choose one of {['auto', *PROFILES]}")
    return PROFILES[name], f"{name} was asked for"


def describe(profile: Profile, reason: str) -> str:
    """The paragraph each notebook prints at its top."""
    return f"Profile: {profile.name} ({reason}).\nWhat that means for the numbers below: {profile.meaning}"
