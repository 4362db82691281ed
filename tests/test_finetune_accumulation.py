"""fine_tune with TrainConfig.accum_steps and loss="siglip", on the ViT mini-CLIP (LayerNorm only, so chunks change
nothing but the order of sums): the parameters after one step against one pass, naive accumulation, and a step
written by hand; two gloo processes x 2 chunks against one process x 4 chunks; resume and the command line.

The one-step comparisons make the step a sensitive read-out of the gradient: AdamW's first step is
lr x g / (|g| + eps), nearly lr x sign(g) with the default eps (blind to a gradient's size), so eps=1 and no
weight decay make it lr x g (|g| << 1); lr 1000 under the schedule's first-step factor 1e-3 makes it about g.
Tolerance: each parameter's change within 1e-5 of its own largest change, plus 1e-6 of the parameter's largest
value (a few fp32 ulps: the new weight is rounded to its own precision, LayerNorm gains near 1 to 1e-7).
"""
import copy
import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.models import build_random_clip
from clip_helpers.siglip import SIGLIP_BIAS, SIGLIP_LOGIT_SCALE
from clip_helpers.text import encode_texts
from clip_helpers.training import finetune, loop
from clip_helpers.training.accumulation import naive_accumulation_backward
from clip_helpers.training.batches import train_loader_for
from clip_helpers.training.checkpoints import RunFolderError
from clip_helpers.training.config import RunFolder, TrainConfig
from clip_helpers.training.settings import SettingsError

NAMES = ["red circle", "blue square", "green star", "yellow heart"]
TEMPLATES = ["a {}.", "a photo of a {}."]
BATCH = 8
LABELS = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])  # same-class pairs, across chunks
LR, FIRST_STEP_FACTOR = 1000.0, 1e-3  # optim.make_scheduler's warmup starts at 1e-3 x lr
STEP_RTOL, WEIGHT_ULPS = 1e-5, 1e-6


def dataset():
    images = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, LABELS)


def config(**changes):
    settings = dict(class_names=NAMES, templates=TEMPLATES, num_epochs=1, lr=LR, eps=1.0, weight_decay=0.0, amp=None,
                    progress=False)
    return TrainConfig(**{**settings, **changes})


def trained(base, run_folder=None, **changes):
    """(weights after fine_tune, its history): one epoch is one step on the whole batch of 8."""
    model = copy.deepcopy(base)
    data = dataset()
    history = fine_tune(model, data, config(**changes), run_folder)
    return model.state_dict(), history


def fine_tune(model, data, train_config, run_folder=None):
    return loop.fine_tune(model, train_loader_for(data, BATCH), DataLoader(data, batch_size=4), train_config, run_folder)


@pytest.fixture(scope="module")
def base():
    return build_random_clip("mini-vit", seed=0)


def changes(after, before):
    return {name: after[name] - before[name] for name in before if before[name].is_floating_point()}


def worst_step_difference(after, expected, before):
    """max over parameters of |a - b| / (STEP_RTOL x its largest change + WEIGHT_ULPS x its largest value):
    at most 1 when every parameter moved as expected, within the tolerance."""
    moved = changes(expected, before)
    return max(((after[n] - expected[n]).abs().max() /
                (STEP_RTOL * moved[n].abs().max() + WEIGHT_ULPS * before[n].abs().max() + 1e-30)).item() for n in moved)


def relative_step_difference(after, expected, before):
    """max over parameters that moved of |a - b| / its largest change."""
    moved = changes(expected, before)
    return max(((after[n] - expected[n]).abs().max() / moved[n].abs().max()).item()
               for n in moved if moved[n].abs().max() > 0)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulated_step_moves_every_parameter_as_the_one_pass_step(base, loss):
    one_pass, one_history = trained(base, loss=loss)
    chunked, chunked_history = trained(base, loss=loss, accum_steps=4)
    print(f"{loss}: 4 chunks vs one pass: {worst_step_difference(chunked, one_pass, base.state_dict()):.2f} of the "
          f"tolerance, {relative_step_difference(chunked, one_pass, base.state_dict()):.1e} of the largest change")
    assert worst_step_difference(chunked, one_pass, base.state_dict()) <= 1
    assert chunked_history["train_loss"].item() == pytest.approx(one_history["train_loss"].item(), rel=1e-6)
    moved = changes(one_pass, base.state_dict())
    assert sum(moved[name].abs().max() > 1e-4 for name in moved) > len(moved) / 2  # a real step, far above the ulps


def test_naive_accumulation_in_its_place_moves_them_elsewhere(base, monkeypatch):
    one_pass, _ = trained(base)

    def naive(accum_steps):
        return lambda model, images, texts, labels, **options: naive_accumulation_backward(
            model, images, texts, labels, accum_steps, options["loss_of"])
    monkeypatch.setattr(loop, "in_chunks", naive)
    naive_weights, _ = trained(base, accum_steps=4)
    difference = relative_step_difference(naive_weights, one_pass, base.state_dict())
    print(f"naive accumulation, 4 chunks vs one pass: {difference:.2f} of the largest change")
    assert difference > 0.05  # the chunks score 2 captions each, not 8: a different step, not rounding


def by_hand_siglip_step(base):
    """One step of SigLIP's recipe written out: t = 10, b = -10, the pair-by-pair loss with same-class positives,
    clip to norm 1, AdamW at the first step's lr, logit_scale clamped; the texts fine_tune drew for this batch."""
    model = copy.deepcopy(base).train()
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(SIGLIP_LOGIT_SCALE)))
    bias = torch.nn.Parameter(torch.tensor(SIGLIP_BIAS))
    images, labels = dataset().tensors
    loader = train_loader_for(TensorDataset(torch.arange(BATCH)), BATCH)
    loop.reseed_sampler(loader, 0, 1)  # the order fine_tune's first epoch reads (iterating the loader draws from it)
    (order,) = [batch for (batch,) in loader]
    generator = torch.Generator().manual_seed(loop.epoch_seed(0, 1) + 500_000_000)
    texts = loop.texts_for(labels[order], NAMES, TEMPLATES, generator)
    x = F.normalize(model.encode_image(images[order]), dim=-1)
    y = F.normalize(encode_texts(model, texts), dim=-1)
    z = (labels[order][:, None] == labels[order][None, :]).float() * 2 - 1
    loss = -F.logsigmoid(z * (model.logit_scale.exp() * x @ y.T + bias)).sum() / BATCH
    loss.backward()
    parameters = [*model.parameters(), bias]
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    adam = torch.optim.AdamW(parameters, lr=LR * FIRST_STEP_FACTOR, betas=(0.9, 0.98), eps=1.0, weight_decay=0.0)
    adam.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, torch.log(torch.tensor(100.0)))
    return model.state_dict(), bias.detach(), loss.item()


def test_siglip_through_fine_tune_is_the_step_written_by_hand(base, tmp_path):
    expected, expected_bias, expected_loss = by_hand_siglip_step(base)
    found, history = trained(base, RunFolder(str(tmp_path / "run")), loss="siglip")
    assert history["train_loss"].item() == pytest.approx(expected_loss, rel=1e-6)
    assert worst_step_difference(found, expected, base.state_dict()) <= 1
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["loss"]["bias"].item() == pytest.approx(expected_bias.item(), abs=1e-6)
    assert saved["loss"]["bias"].item() != SIGLIP_BIAS  # the optimiser trained it


def test_resume_restores_the_siglip_bias_and_gives_the_uninterrupted_run(base, tmp_path, monkeypatch):
    settings = dict(loss="siglip", num_epochs=2, lr=1e-2, eps=1e-6, accum_steps=2)
    whole, _ = trained(base, RunFolder(str(tmp_path / "whole")), **settings)
    original = loop.train_step

    def stopped_in_epoch_2(*args, **kwargs):
        if loop.train_step.calls == 1:
            raise KeyboardInterrupt
        loop.train_step.calls += 1
        return original(*args, **kwargs)
    stopped_in_epoch_2.calls = 0
    monkeypatch.setattr(loop, "train_step", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trained(base, RunFolder(str(tmp_path / "stopped")), **settings)
    monkeypatch.setattr(loop, "train_step", original)
    after_one = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert after_one["epoch"] == 1 and after_one["loss"]["bias"].item() != SIGLIP_BIAS
    resumed, _ = trained(base, RunFolder(str(tmp_path / "stopped"), resume=True), **settings)
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)
    ends = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["loss"]["bias"] for name in ("whole", "stopped")]
    assert torch.equal(*ends)


@pytest.mark.parametrize("changed", [{"accum_steps": 2}, {"loss": "siglip"}])
def test_resume_refuses_another_accum_steps_or_loss(base, tmp_path, changed):
    trained(base, RunFolder(str(tmp_path / "run")), num_epochs=1)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["accum_steps"] == 1 and record["loss"] == "clip"
    (name, value), = changed.items()
    with pytest.raises(RunFolderError, match=f"{name}: .* -> {value!r}"):
        trained(base, RunFolder(str(tmp_path / "run"), resume=True), num_epochs=1, **changed)


def test_a_run_recorded_before_these_settings_resumes_with_their_old_values_only(base, tmp_path):
    trained(base, RunFolder(str(tmp_path / "run")))
    path = tmp_path / "run" / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    for name in ("accum_steps", "loss"):
        del saved["config"][name]
    torch.save(saved, path)
    with pytest.raises(RunFolderError, match="accum_steps: 1 -> 2"):
        trained(base, RunFolder(str(tmp_path / "run"), resume=True), num_epochs=2, accum_steps=2)
    _, history = trained(base, RunFolder(str(tmp_path / "run"), resume=True), num_epochs=1)
    assert history["epoch"].tolist() == [1]  # nothing left to train: accepted as the same run


@pytest.mark.parametrize("changes, message", [
    ({"accum_steps": 0}, "accum_steps must be a whole number >= 1, not 0"),
    ({"accum_steps": 2.0}, "accum_steps must be a whole number >= 1, not 2.0"),
    ({"accum_steps": True}, "accum_steps must be a whole number >= 1, not True"),
    ({"loss": "sigmoid"}, "loss must be one of 'clip', 'siglip'")])
def test_train_config_refuses_bad_accum_steps_and_loss(changes, message):
    with pytest.raises(ValueError, match=message):
        config(**changes)


def test_fine_tune_refuses_accum_steps_that_do_not_divide_the_batch(base, monkeypatch):
    monkeypatch.setattr(loop, "train_step", lambda *args, **kwargs: pytest.fail("a step ran"))
    with pytest.raises(SettingsError, match=r"accum_steps 3 does not divide the batch of 8 pairs .* \(1, 2, 4, 8\)"):
        trained(base, accum_steps=3)


def test_command_line_passes_accum_steps_and_loss_through(tmp_path):
    args = finetune.parse_args(["--model", "mini", "--batch-size", "16", "--accum-steps", "4", "--loss", "siglip"])
    data, train_config, _ = finetune.settings_of(args, "run")
    assert (train_config.accum_steps, train_config.loss, data.batch_size) == (4, "siglip", 16)
    args = finetune.parse_args(["--model", "mini"])
    assert (finetune.settings_of(args, "run")[1].accum_steps, args.loss) == (1, "clip")


@pytest.mark.parametrize("argv, message", [
    (["--accum-steps", "0"], "argument --accum-steps: must be >= 1, not 0"),
    (["--accum-steps", "two"], "argument --accum-steps: 'two' is not a whole number"),
    (["--batch-size", "12", "--accum-steps", "5"], "--accum-steps 5 does not divide the batch of 12 pairs"),
    (["--loss", "sigmoid"], "argument --loss: invalid choice: 'sigmoid'")])
def test_command_line_refuses_bad_accum_steps_and_loss(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as stop:
        finetune.parse_args(["--model", "mini", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_command_line_checks_accum_steps_against_each_process_share(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: 16 pairs are 8 per process
    finetune.parse_args(["--model", "mini", "--batch-size", "16", "--accum-steps", "4"])
    with pytest.raises(SystemExit):
        finetune.parse_args(["--model", "mini", "--batch-size", "16", "--accum-steps", "16"])
    assert "each of the 2 processes' 8 pairs" in capsys.readouterr().err


def test_command_line_help_documents_both_flags(capsys):
    with pytest.raises(SystemExit):
        finetune.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--accum-steps K" in out and "GradCache" in out and "{clip,siglip}" in out and "bias" in out


# ---------------------------------------------------------------- torchrun: N processes x K chunks

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_worker(rank, port, out_dir):
    """One of torchrun's two processes (its environment set as torchrun sets it): 2 chunks of its 4 pairs."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if sys.platform == "linux":
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    from clip_helpers.training import distributed
    distributed.init_from_env(device="cpu", timeout_s=120)
    for loss in ("clip", "siglip"):
        weights, history = trained(build_random_clip("mini-vit", seed=0), RunFolder(os.path.join(out_dir, loss)),
                                   loss=loss, accum_steps=2)
        torch.save({"weights": weights, "train_loss": history["train_loss"].item()},
                   os.path.join(out_dir, f"{loss}-rank{rank}.pt"))
    distributed.cleanup()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("two")
    mp.spawn(two_process_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return out_dir


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_two_processes_of_two_chunks_step_as_one_process_of_four(base, two_process_runs, tmp_path, loss):
    one, one_history = trained(base, RunFolder(str(tmp_path / loss)), loss=loss, accum_steps=4)
    for rank in range(WORLD):
        found = torch.load(two_process_runs / f"{loss}-rank{rank}.pt", weights_only=True)
        print(f"{loss}, rank {rank}: 2 processes x 2 chunks vs 1 x 4: "
              f"{worst_step_difference(found['weights'], one, base.state_dict()):.2f} of the tolerance")
        assert found["train_loss"] == pytest.approx(one_history["train_loss"].item(), rel=1e-6)
        assert worst_step_difference(found["weights"], one, base.state_dict()) <= 1
    saved = [torch.load(folder / loss / "checkpoint.pt", weights_only=True) for folder in (two_process_runs, tmp_path)]
    assert json.loads((two_process_runs / loss / "run.json").read_text())["accum_steps"] == 2
    if loss == "siglip":  # the bias, outside DDP, sees the gathered loss's whole gradient on every process
        assert saved[0]["loss"]["bias"].item() == pytest.approx(saved[1]["loss"]["bias"].item(), abs=1e-6)
        assert saved[1]["loss"]["bias"].item() != SIGLIP_BIAS
