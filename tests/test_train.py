import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.training import checkpoints, evaluation, optim, recipes, loop as train
from clip_helpers import losses
from clip_helpers.training.batches import train_loader_for, val_loader_for
from clip_helpers.device import make_scaler
from clip_helpers.losses import clip_loss
from clip_helpers.models import load_clip, preprocess_for
from clip_helpers.training.recipes import SMOKE_RECIPE
from clip_helpers.training import processes
from clip_helpers.training.config import RunFolder, TrainConfig
from clip_helpers.training.loop import fine_tune

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart"]
ROOT = Path(__file__).resolve().parent.parent

RUN_FOLDER_FIELDS = ("run_dir", "resume", "overwrite", "run_settings")


def split_settings(settings):
    """(TrainConfig, RunFolder or None) of one dict of both's fields."""
    run = {key: settings.pop(key) for key in RUN_FOLDER_FIELDS if key in settings}
    return TrainConfig(**settings), RunFolder(**run) if run.get("run_dir") else None


def config_for(run_dir=None, **overrides):
    settings = dict(class_names=CLASS_NAMES, templates=["a {}.", "a photo of a {}."], num_epochs=2, lr=1e-3,
                    run_dir=str(run_dir) if run_dir else None, progress=False)
    return split_settings({**settings, **overrides})


def run(model, tiny_data, config_and_folder):
    train_set, val_set = tiny_data
    config, folder = config_and_folder
    return fine_tune(model, train_loader_for(train_set, batch_size=8, seed=config.seed), DataLoader(val_set, batch_size=8), config,
                     folder)


class CrashOnEpoch:
    """A train loader that dies when epoch `epoch` starts, like a run killed between epochs."""

    def __init__(self, loader, epoch):
        self.loader, self.epoch, self.started = loader, epoch, 0

    def __iter__(self):
        self.started += 1
        if self.started == self.epoch:
            raise KeyboardInterrupt
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # sampler, batch_size, dataset: the wrapped loader's
        return getattr(self.loader, name)


def test_loss_goes_down_on_a_fixed_batch(mini, tiny_data):
    model = copy.deepcopy(mini).train()
    images, labels = tiny_data[0].tensors
    config, _ = config_for(lr=1e-3)
    optimizer = optim.make_optimizer(model, config)
    scaler = make_scaler("cpu", config.amp)
    texts = [CLASS_NAMES[label] for label in labels]
    losses = [train.train_step(model, images, labels, texts, optimizer, scaler) for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(mini, tiny_data, tmp_path):
    whole = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "whole"))

    train_set, val_set = tiny_data
    crashing = CrashOnEpoch(train_loader_for(train_set, batch_size=8), epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(copy.deepcopy(mini), crashing, DataLoader(val_set, batch_size=8), *config_for(tmp_path / "resumed"))
    assert checkpoints.load_checkpoint(tmp_path / "resumed")["epoch"] == 1
    resumed_model = copy.deepcopy(mini)  # a fresh process would rebuild the model from scratch
    resumed = run(resumed_model, tiny_data, config_for(tmp_path / "resumed", resume=True))

    columns = ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_inbatch_acc", "lr"]
    assert len(resumed) == len(whole) == 2
    assert whole["train_loss"].iloc[1] != whole["train_loss"].iloc[0]
    for column in columns:
        assert resumed[column].tolist() == pytest.approx(whole[column].tolist(), rel=1e-6, abs=1e-9), column
    final = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    for name, tensor in resumed_model.state_dict().items():
        torch.testing.assert_close(tensor, final[name], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(mini, tiny_data, tmp_path, monkeypatch):
    steps_per_epoch = 3  # 24 images, batch 8
    calls = {"training": 0}

    def poisoned_clip_loss(*args, **kwargs):
        loss = clip_loss(*args, **kwargs)
        if torch.is_grad_enabled():  # training calls only, not validation
            calls["training"] += 1
            if calls["training"] == steps_per_epoch + 2:  # second step of epoch 2
                return loss * float("nan")
        return loss

    monkeypatch.setattr(processes, "clip_loss", poisoned_clip_loss)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 2, step 2.*checkpoint.*epoch 1"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))
    assert checkpoints.load_checkpoint(tmp_path)["epoch"] == 1
    model, _ = load_clip(str(tmp_path / "model.pt"), device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_logit_scale_is_clamped_to_ln_100(mini, tiny_data):
    model = copy.deepcopy(mini).train()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    images, labels = tiny_data[0].tensors
    config, _ = config_for()
    train.train_step(model, images[:8], labels[:8], [CLASS_NAMES[i] for i in labels[:8]],
                     optim.make_optimizer(model, config), make_scaler("cpu", None))
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_weight_decay_skips_gains_biases_embeddings_and_logit_scale(mini):
    decay, no_decay = optim.parameter_groups(mini, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in mini.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(kept) and len(decayed) + len(kept) == len(names)
    for name in ["logit_scale", "positional_embedding", "token_embedding.weight", "ln_final.weight",
                 "ln_final.bias", "transformer.resblocks.0.attn.in_proj_bias", "visual.bn1.weight"]:
        assert name in kept, name
    for name in ["text_projection", "transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight",
                 "transformer.resblocks.0.mlp.c_fc.weight"]:
        assert name in decayed, name


def test_warmup_then_cosine_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = optim.make_scheduler(optimizer, total_steps=20, warmup_fraction=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < 0.01 and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.01


def test_inbatch_accuracy_counts_only_the_first_duplicate():
    # Images 0 and 1 share a class, so their captions' columns tie; argmax picks column 0 for both.
    logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 3.0]])
    assert evaluation.inbatch_accuracy(logits) == 2.0


def test_mini_clip_splits_never_share_an_image():
    recipe = {**SMOKE_RECIPE, "n_per_class": 6}
    train_set, val_set, heldout, class_names = recipes.shapes_splits(recipe, preprocess_for(32))
    train_rows = {tuple(image.flatten()[::7].tolist()) for image in train_set.tensors[0]}
    val_rows = {tuple(image.flatten()[::7].tolist()) for image in val_set.tensors[0]}
    assert len(train_rows) == len(train_set) and len(val_rows) == len(val_set)
    assert train_rows.isdisjoint(val_rows)
    assert set(heldout.tensors[1].tolist()).isdisjoint(train_set.tensors[1].tolist())
    assert len(class_names) == 36


def test_the_mini_clip_recipe_trains_and_scores_the_same_with_or_without_bf16_hardware(monkeypatch):
    """MINI_RECIPE's amp=None must reach every step and score: autocast would make the course's mini-CLIPs
    depend on whether the CPU has bf16."""
    from clip_helpers import device
    from clip_helpers.models import build_random_clip
    assert recipes.MINI_RECIPE["amp"] is None
    recipe = {**SMOKE_RECIPE, "amp": recipes.MINI_RECIPE["amp"], "n_per_class": 8}
    histories = []
    for has_bf16 in (False, True):
        monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
        history = recipes.fit_on_shapes(build_random_clip("mini", seed=0), recipe, progress=False)
        histories.append(history.drop(columns=["seconds"]))
    assert histories[0].equals(histories[1])
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)  # the control: autocast does change the numbers
    autocast = recipes.fit_on_shapes(build_random_clip("mini", seed=0), {**recipe, "amp": "auto"}, progress=False)
    assert not histories[0]["train_loss"].equals(autocast["train_loss"])


@pytest.mark.slow
def test_train_mini_clip_smoke_recipe_trains_caches_and_reloads(tmp_path):
    model, preprocess, history = recipes.train_mini_clip(SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())  # the weights, their history and the epoch-1 weights
    assert len(files) == 3 and files[0].startswith("mini-clip-shapes-") and recipes.recipe_key(recipes.MINI_RECIPE) not in files[0]
    assert recipes.early_checkpoint_path(SMOKE_RECIPE, tmp_path).name in files
    assert {"train_loss", "val_top1", "held_out_top1"} <= set(history.columns)
    again, _, cached_history = recipes.train_mini_clip(SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    assert cached_history["train_loss"].tolist() == pytest.approx(history["train_loss"].tolist())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)


@pytest.mark.slow
def test_int8_evaluation_leaves_training_untouched_and_scores_close_to_fp32(tiny_data):
    from clip_helpers.models import build_random_clip
    fp32 = run(build_random_clip("mini-vit", seed=0).train(), tiny_data, config_for())
    int8 = run(build_random_clip("mini-vit", seed=0).train(), tiny_data, config_for(int8_eval=True))
    assert int8["train_loss"].tolist() == fp32["train_loss"].tolist()  # evaluation draws no random numbers
    assert int8["val_loss"].tolist() != fp32["val_loss"].tolist()  # the int8 tower was used...
    assert int8["val_loss"].tolist() == pytest.approx(fp32["val_loss"].tolist(), rel=0.02)  # ...and is close


@pytest.mark.slow
def test_resume_with_another_number_of_epochs_is_refused_with_a_reason(mini, tiny_data, tmp_path):
    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "run", num_epochs=1))
    with pytest.raises(ValueError, match=r"\(old -> new\): num_epochs: 1 -> 2\. .*new run"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "run", num_epochs=2, resume=True))
    resumed = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "run", num_epochs=1, resume=True))
    assert resumed["epoch"].tolist() == [1]  # the same plan resumes (here: nothing left to do)


# ---------------------------------------------------------------- reduced precision and the scaler

def one_step(mini, tiny_data, amp, scaler):
    """(loss, the gradients the optimiser used [flat], the model) after one train_step from mini's weights."""
    model = copy.deepcopy(mini).train()
    images, labels = tiny_data[0].tensors
    optimizer = optim.make_optimizer(model, config_for(amp=amp)[0])
    loss = train.train_step(model, images[:8], labels[:8], [CLASS_NAMES[i] for i in labels[:8]], optimizer, scaler,
                            amp=amp)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), model


def test_only_fp16_gets_a_working_scaler():
    assert train.make_scaler("cpu", "float16").is_enabled()
    assert not train.make_scaler("cpu", "bfloat16").is_enabled() and not train.make_scaler("cpu", None).is_enabled()


@pytest.fixture(scope="module")
def fp32_step(mini, tiny_data):
    """(loss, gradients) of one fp32 step: the reference for the reduced-precision steps."""
    loss, grads, _ = one_step(mini, tiny_data, None, train.make_scaler("cpu", None))
    return loss, grads


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_a_reduced_precision_step_computes_in_it_and_uses_the_fp32_steps_gradients(mini, tiny_data, fp32_step, amp):
    fp32_loss, fp32_grads = fp32_step
    dtypes = []
    hooked = copy.deepcopy(mini)
    hooked.visual.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, enabled=amp == "float16")  # small enough not to overflow
    loss, grads, model = one_step(hooked, tiny_data, amp, scaler)
    assert dtypes == [getattr(torch, amp)]  # the image tower really ran in reduced precision
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    assert loss != fp32_loss and loss == pytest.approx(fp32_loss, rel=0.02)
    # The optimiser saw the true gradients, clipped: unscaled before clipping, not the scaled ones (norm 1/256).
    assert grads.norm().item() == pytest.approx(fp32_grads.norm().item(), rel=0.05)
    assert torch.nn.functional.cosine_similarity(grads, fp32_grads, dim=0) > 0.98
    if amp == "float16":
        assert scaler.get_scale() == 2.0 ** 8  # no overflow, no skipped step


def test_an_fp16_overflow_skips_the_step_and_halves_the_scale(mini, tiny_data):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # any gradient above 0.004 overflows fp16
    _, _, model = one_step(mini, tiny_data, "float16", scaler)
    assert scaler.get_scale() == 2.0 ** 23
    before = dict(mini.named_parameters())
    for name, parameter in model.named_parameters():  # (BatchNorm's running statistics move in any forward)
        assert torch.equal(parameter, before[name]), name


@pytest.mark.slow  # three fp16 training runs: fp16 is emulated on a CPU
def test_a_resumed_fp16_run_restores_the_scalers_scale_and_matches_an_uninterrupted_one(mini, tiny_data, tmp_path):
    config = dict(amp="float16", num_epochs=2)
    whole = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "whole", **config))
    whole_scale = checkpoints.load_checkpoint(tmp_path / "whole")["scaler"]["scale"]
    assert whole_scale < 65536.0  # fp16 overflowed at the default scale, so the scaler's state really changed

    train_set, val_set = tiny_data
    crashing = CrashOnEpoch(train_loader_for(train_set, batch_size=8), epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(copy.deepcopy(mini), crashing, DataLoader(val_set, batch_size=8), *config_for(tmp_path / "resumed", **config))
    resumed = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "resumed", resume=True, **config))
    assert checkpoints.load_checkpoint(tmp_path / "resumed")["scaler"]["scale"] == whole_scale
    for column in ["train_loss", "val_loss", "val_top1", "lr"]:
        assert resumed[column].tolist() == pytest.approx(whole[column].tolist(), rel=1e-6, abs=1e-9), column


@pytest.mark.slow  # a training run first
def test_resume_when_the_steps_per_epoch_change_is_refused_with_a_reason(mini, tiny_data, tmp_path):
    """The saved schedule counts num_epochs x steps_per_epoch steps: another batch size would bend it."""
    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=1))
    train_set, val_set = tiny_data
    smaller_batches = train_loader_for(train_set, batch_size=4)  # 24 images: 6 steps an epoch instead of 3
    with pytest.raises(ValueError, match=r"batch_size: 8 -> 4; steps_per_epoch: 3 -> 6\."):
        fine_tune(copy.deepcopy(mini), smaller_batches, DataLoader(val_set, batch_size=8),
                  *config_for(tmp_path, num_epochs=1, resume=True))


# ---------------------------------------------------------------- validation batches and their floor

def test_loss_floor_is_reached_by_a_perfect_model_and_never_beaten():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    features = torch.nn.functional.one_hot(labels).float()  # each image on its class's (shared) caption
    for targets in (None, labels):  # plain and multi-positive: the same floor for exact duplicates
        reached = clip_loss(features, features, torch.tensor(1000.0), targets).item()
        assert reached == pytest.approx((3 * math.log(3) + 2 * math.log(2) + 2 * math.log(2)) / 8, abs=1e-4)
    random_features = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    assert clip_loss(random_features, features, torch.tensor(50.0)).item() > losses.loss_floor(labels)
    assert losses.loss_floor(labels) == pytest.approx(reached, abs=1e-4)
    assert losses.inbatch_ceiling(labels) == 4 / 8
    with pytest.raises(ValueError, match="at least one item"):
        losses.loss_floor([])


def test_validation_scores_report_the_floor_of_their_own_batches(mini):
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 1, 1, 1])
    dataset = TensorDataset(torch.randn(10, 3, 32, 32, generator=generator), labels)
    classifier = torch.nn.functional.normalize(torch.randn(4, mini.visual.output_dim, generator=generator), dim=-1)
    scores = evaluation.validation_scores(mini, DataLoader(dataset, batch_size=4), classifier, amp=None)
    batches = [labels[:4], labels[4:8], labels[8:]]  # by hand: sum over classes of k log k, per batch
    by_hand = [sum(k * math.log(k) for k in torch.bincount(b).tolist() if k) for b in batches]
    assert scores["val_loss_floor"] == pytest.approx(sum(by_hand) / 10)
    assert scores["val_inbatch_max"] == pytest.approx(100 * (2 + 3 + 1) / 10)  # distinct labels per batch
    assert scores["val_loss"] >= scores["val_loss_floor"] and scores["val_inbatch_acc"] <= scores["val_inbatch_max"]


def test_history_gives_the_floor_of_the_training_batches_and_none_for_validation(mini):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 0, 1, 2, 3])  # read in order: batches of 8 and 4
    train_set = TensorDataset(torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3)), labels)
    history = fine_tune(copy.deepcopy(mini), DataLoader(train_set, batch_size=8),
                        val_loader_for(train_set, batch_size=8), *config_for(num_epochs=1))
    first = (3 * math.log(3) + 2 * math.log(2) + 2 * math.log(2)) / 8  # sum over classes of k log k, per image
    assert history["train_loss_floor"].iloc[0] == pytest.approx((first + 0.0) / 2)  # the second batch: 4 classes
    assert history["train_loss"].iloc[0] > history["train_loss_floor"].iloc[0]
    assert history["val_loss_floor"].iloc[0] == 0 and history["val_inbatch_max"].iloc[0] == 100


def test_extra_scores_are_measured_after_every_epoch(mini, tiny_data):
    train_set, val_set = tiny_data
    history = fine_tune(copy.deepcopy(mini), train_loader_for(train_set, batch_size=8),
                        val_loader_for(val_set, batch_size=8), *config_for(num_epochs=3),
                        extra_scores=lambda model: {"scale": model.logit_scale.item()})
    assert len(history) == 3 and history["scale"].nunique() == 3  # the model moved: one value per epoch, not one copied


# ---------------------------------------------------------------- one process: nothing distributed

SINGLE_PROCESS_RUN = """
import sys, torch
from torch.utils.data import DataLoader, TensorDataset
from clip_helpers.models import build_random_clip
from clip_helpers.training.batches import train_loader_for
from clip_helpers.training.config import RunFolder, TrainConfig
from clip_helpers.training.loop import fine_tune
data = TensorDataset(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 4)
config = TrainConfig(class_names=["red circle", "blue square", "green star", "yellow heart"], templates=["a {}."],
                     num_epochs=1, lr=1e-3, amp=None, progress=False)
history = fine_tune(build_random_clip("mini", seed=0), train_loader_for(data, 4), DataLoader(data, batch_size=4), config,
                    RunFolder(sys.argv[1]))
print(len(history), sorted(name for name in sys.modules if name.startswith("clip_helpers.training.")))
"""


def test_a_single_process_run_imports_nothing_distributed(tmp_path):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", SINGLE_PROCESS_RUN, str(tmp_path / "run")], capture_output=True,
                          text=True, env=environment, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs, modules = done.stdout.strip().split(" ", 1)
    assert epochs == "1" and (tmp_path / "run" / "checkpoint.pt").is_file()  # the run trained and saved
    assert "clip_helpers.training.loop" in modules  # the check sees the training modules it imported
    assert "clip_helpers.training.distributed" not in modules
    assert "clip_helpers.training.gathering" not in modules
