"""Two CPU processes (gloo, 127.0.0.1) against one process on the same global batch: same loss, same gradients
of every parameter, same weights after a few AdamW steps; then whole fine_tune runs: two processes end with
the weights and history of one, and a run killed mid-epoch resumes on two processes to the uninterrupted
result; and the command line under real torchrun. The model is the ViT mini-CLIP: its LayerNorms make the
comparison exact (a ResNet tower's BatchNorm would see 4 images instead of 8; see wrap_model).
Starting processes dominates the time (importing torch and clip), so one spawn of two processes does the
gradient checks, the whole run and the killed run; a second resumes it.

Tolerances (fp32): loss rtol 1e-6; each parameter's gradient within 1e-5 of its largest element; weights after
3 AdamW steps within 1e-2 x lr = 1e-5. The differences come only from summing in
another order (4 images' features computed together, then 8). The weights' tolerance is in units of lr
because Adam divides each gradient by its own running size: an element whose gradient is zero in exact
arithmetic (the key bias of attention: softmax ignores a shift shared by all keys) gets rounding noise
divided by rounding noise, a step of up to lr in either run. Adam's scale invariance also means the
weights test cannot see a gradient scaled by a constant: the gradient test is the one that would.
Whole fine_tune runs (2 epochs x 2 steps of the warmup-then-cosine schedule, lr 1e-3): history rel 1e-5,
weights within 1e-2 x lr of one process's; the killed run resumed on two processes must equal the
uninterrupted run on two exactly.
"""
import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Subset

from clip_helpers.training import batches, checkpoints, distributed, optim, loop as train
from clip_helpers import device
from clip_helpers.losses import clip_loss
from clip_helpers.models import build_random_clip, preprocess_for
from clip_helpers.training.recipes import rendered
from clip_helpers.sources import open_source
from clip_helpers.text import CIFAR10_CLASSES, CIFAR10_TEMPLATES, encode_texts

pytestmark = pytest.mark.slow

WORLD, LOCAL_BATCH, STEPS, LR = 2, 4, 3, 1e-3
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-9
WEIGHT_ATOL = 1e-2 * LR
# Classes shared within and across the two halves, so the multi-positive targets join pairs across processes.
LABELS = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])


def global_batch(step=0):
    generator = torch.Generator().manual_seed(100 + step)
    images = torch.randn(WORLD * LOCAL_BATCH, 3, 32, 32, generator=generator)
    labels = LABELS.roll(step)
    # A different prompt for every image, so two captions of one class differ and the labels matter.
    texts = [CIFAR10_TEMPLATES[(i + step) % len(CIFAR10_TEMPLATES)].format(CIFAR10_CLASSES[label])
             for i, label in enumerate(labels)]
    return images, labels, texts


def config():
    return train.TrainConfig(class_names=CIFAR10_CLASSES, lr=LR, weight_decay=0.2, amp=None, progress=False)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def join_torchrun_processes(rank, port):
    """Join the group as one of torchrun's processes, its environment set as torchrun would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if sys.platform == "linux":
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface only
    torch.set_num_threads(1)
    # A short timeout: a process whose partner died must fail, not wait the default 30 minutes.
    return distributed.init_from_env(device="cpu", timeout_s=60)


def worker(rank, port, out_dir, data):
    """One of two processes: the gradient checks, a whole run, then a run killed mid-epoch (see run_worker)."""
    processes = join_torchrun_processes(rank, port)
    gradient_checks(processes, out_dir)
    run_worker(processes, data, out_dir, kill=True)


def gradient_checks(processes, out_dir):
    rank = processes.rank
    own = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)  # the contiguous chunk rule of ShardedSampler
    result = {"processes": processes}
    model = distributed.wrap_model(build_random_clip("mini-vit", seed=0).train(), processes)
    images, labels, texts = global_batch()
    for name, use_labels in (("with_labels", True), ("without_labels", False)):
        model.zero_grad()
        image_features, text_features, logit_scale = model(images[own], texts[own])
        loss = distributed.distributed_clip_loss(image_features, text_features, logit_scale,
                                                 labels[own] if use_labels else None)
        loss.backward()
        result[name] = {"loss": loss.item(), "grads": gradients(distributed.unwrap(model))}
    # The rule the brief suggested (gather without grad, local slice back, loss x N): wrong for logit_scale.
    model.zero_grad()
    image_features, text_features, logit_scale = model(images[own], texts[own])
    local_slot = [distributed.gather(f.detach()) for f in (image_features, text_features)]
    for gathered, local in zip(local_slot, (image_features, text_features)):
        gathered[own] = local
    (WORLD * clip_loss(*local_slot, logit_scale, distributed.gather(labels[own]))).backward()
    result["naive_logit_scale_grad"] = distributed.unwrap(model).logit_scale.grad.clone()
    result["steps"] = distributed_steps(model, processes, own)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def distributed_steps(model, processes, own):
    """train.train_step's recipe (AdamW, clip to norm 1, clamp logit_scale) with the gathered loss."""
    clip_model = distributed.unwrap(model)
    optimizer = optim.make_optimizer(clip_model, config())
    losses = []
    for step in range(STEPS):
        images, labels, texts = global_batch(step)
        optimizer.zero_grad(set_to_none=True)
        image_features, text_features, logit_scale = model(images[own], texts[own])
        loss = distributed.distributed_clip_loss(image_features, text_features, logit_scale, labels[own])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip_model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            clip_model.logit_scale.clamp_(0, math.log(train.LOGIT_SCALE_MAX))
        losses.append(loss.item())
    return {"losses": losses, "weights": {k: v.clone() for k, v in clip_model.state_dict().items()}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Two processes (worker) and, while they work, the one-process run; the two die in their killed run."""
    out_dir = tmp_path_factory.mktemp("spawned")
    data = shapes_data()
    context = mp.spawn(worker, args=(free_port(), str(out_dir), data), nprocs=WORLD, join=False)
    model, history = run_fine_tune(data, out_dir / "one")
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)) as killed:
        while not context.join():
            pass
    gone = time.time() - float((out_dir / "killed-at").read_text())
    return {"dir": out_dir, "data": data, "one": {"history": history, "weights": model.state_dict()},
            "killed": killed.value, "gone_after_s": gone}


@pytest.fixture(scope="module")
def ranks(spawned):
    return [torch.load(spawned["dir"] / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def base():
    return build_random_clip("mini-vit", seed=0).train()


@pytest.fixture(scope="module")
def one_process(base):
    """{case: (loss, gradients)} of one process on the whole global batch, with the kit's clip_loss."""
    result = {}
    for case, use_labels in (("with_labels", True), ("without_labels", False)):
        model = copy.deepcopy(base)
        images, labels, texts = global_batch()
        # The kit's two encoders, as train.train_step calls them.
        image_features, text_features = model.encode_image(images), encode_texts(model, texts)
        logit_scale = model.logit_scale.exp()
        loss = clip_loss(image_features, text_features, logit_scale, labels if use_labels else None)
        loss.backward()
        result[case] = loss.item(), gradients(model)
    return result


def max_difference(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_processes_read_from_torchrun_environment(ranks):
    assert [r["processes"] for r in ranks] == [
        distributed.Processes(rank, WORLD, rank, "cpu", rank == 0) for rank in range(WORLD)]


@pytest.mark.parametrize("case", ["with_labels", "without_labels"])
def test_loss_and_every_gradient_equal_one_process_on_the_global_batch(ranks, one_process, case):
    loss, grads = one_process[case]
    for r in ranks:
        assert r[case]["loss"] == pytest.approx(loss, rel=1e-6)
        print(f"{case}: |loss difference| {abs(r[case]['loss'] - loss):.1e}")
        assert r[case]["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            # Each parameter's difference against the size of its own gradient, not element by element:
            # an element near zero carries rounding noise from the rest of the sum, far above 1e-5 of itself.
            scale = grad.abs().max().item()
            difference = (r[case]["grads"][name] - grad).abs().max().item()
            assert difference <= GRAD_RTOL * scale + GRAD_ATOL, f"{name}: {difference:.2e} of {scale:.2e}"
        relative = max((r[case]["grads"][k] - g).abs().max().item() / g.abs().max().item()
                       for k, g in grads.items() if g.abs().max() > GRAD_ATOL)
        print(f"{case}: loss {loss:.6f}, max |gradient difference| {max_difference(r[case]['grads'], grads):.2e}, "
              f"at most {relative:.1e} of the largest gradient element of its parameter")
    assert grads["logit_scale"].abs() > 1e-3  # so the next test's factor of 2 is visible
    assert one_process["with_labels"][0] != pytest.approx(one_process["without_labels"][0])  # the labels matter


def test_scaling_a_local_slot_gather_by_the_world_size_gets_logit_scale_wrong(ranks, one_process):
    _, grads = one_process["with_labels"]
    for r in ranks:
        torch.testing.assert_close(r["naive_logit_scale_grad"], WORLD * grads["logit_scale"], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_adamw_steps_on_two_processes_end_with_the_weights_of_one(ranks, base):
    model = copy.deepcopy(base)
    optimizer = optim.make_optimizer(model, config())
    scaler = device.make_scaler("cpu", None)
    losses = []
    for step in range(STEPS):  # the kit's own step, on the whole global batch
        images, labels, texts = global_batch(step)
        losses.append(train.train_step(model, images, labels, texts, optimizer, scaler, 1.0, amp=None))
    weights = model.state_dict()
    for r in ranks:
        assert r["steps"]["losses"] == pytest.approx(losses, rel=1e-6)
        difference = max_difference(r["steps"]["weights"], weights)
        print(f"after {STEPS} AdamW steps: max |weight difference| {difference:.2e}")
        assert difference <= WEIGHT_ATOL
    moved = max_difference(weights, base.state_dict())
    assert moved > 100 * WEIGHT_ATOL  # the steps changed the weights far more than the tolerance


def test_sharded_sampler_splits_each_global_batch_into_contiguous_chunks():
    dataset = torch.utils.data.TensorDataset(torch.arange(23))
    one = list(batches.ShardedSampler(dataset, 6, num_replicas=1, rank=0, seed=5))
    shards = [list(batches.ShardedSampler(dataset, 3, num_replicas=2, rank=r, seed=5)) for r in range(2)]
    assert len(one) == 18 and all(len(s) == 9 for s in shards)  # 3 global batches of 6; the last 5 items dropped
    for b in range(3):  # rank order reassembles the global batch one process reads
        assert shards[0][3 * b:3 * b + 3] + shards[1][3 * b:3 * b + 3] == one[6 * b:6 * b + 6]
    assert sorted(one) == sorted(set(one))
    sampler = batches.ShardedSampler(dataset, 6, num_replicas=1, rank=0, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) != one and list(sampler) == list(sampler)


def test_shard_reads_the_global_batches_one_process_reads():
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    one = batches.train_loader_for(dataset, 8, seed=3)
    shards = [batches.shard(one, distributed.Processes(r, 2, r, "cpu", r == 0), seed=3) for r in range(2)]
    orders = []
    for epoch in (1, 2):
        for loader in (one, *shards):
            train.reseed_sampler(loader, 3, epoch)
        global_batches = [batch.tolist() for (batch,) in one]
        halves = [[batch.tolist() for (batch,) in shard] for shard in shards]
        assert [a + b for a, b in zip(*halves)] == global_batches[:2]  # the short last batch (4 items) is dropped
        orders.append(global_batches)
    assert orders[0] != orders[1]  # the order changes with the epoch
    assert batches.shard(one, distributed.SINGLE, seed=3) is one
    weighted = DataLoader(dataset, batch_size=8, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 20, 20))
    with pytest.raises(ValueError, match="batches.sharded_train_loader"):
        batches.shard(weighted, distributed.Processes(0, 2, 0, "cpu", True), seed=3)


def test_batches_that_do_not_split_are_refused():
    with pytest.raises(ValueError, match="multiple of 3"):
        batches.local_batch_size(10, 3)
    with pytest.raises(ValueError, match="smaller batch size"):
        batches.sharded_train_loader(torch.utils.data.TensorDataset(torch.arange(5)), 8)


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env(device="cpu") == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env(device="cpu")


# ---------------------------------------------------------------- fine_tune on two processes

# Tolerances of whole runs (fp32, 2 epochs x 2 AdamW steps of the warmup-then-cosine schedule): losses and
# validation scores rel 1e-5; weights within 1e-2 x lr of one process's, for the reason the module docstring
# gives (Adam amplifies rounding noise in zero-gradient elements up to a step of the lr). A resumed run on
# two processes repeats the uninterrupted one on two processes operation for operation: it must be exact.
RUN_LR, RUN_BATCH, RUN_EPOCHS = 1e-3, 8, 2
RUN_WEIGHT_ATOL = 1e-2 * RUN_LR
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_inbatch_acc", "lr"]


def shapes_data():
    """(train, val, class_names): 16 and 8 shapes images pre-rendered, 2 global batches of 8 per epoch."""
    opened = open_source("shapes", "train", n_per_class=1, transform=preprocess_for(32), seed=0)
    order = torch.randperm(len(opened.dataset), generator=torch.Generator().manual_seed(0)).tolist()
    return (rendered(Subset(opened.dataset, order[:16])), rendered(Subset(opened.dataset, order[16:24])),
            opened.class_names)


def run_config(class_names, run_dir, **changes):
    from clip_helpers.shapes import SHAPES_TEMPLATES
    return (train.TrainConfig(class_names=class_names, templates=SHAPES_TEMPLATES, num_epochs=RUN_EPOCHS, lr=RUN_LR,
                              amp=None, progress=False), train.RunFolder(run_dir=str(run_dir), **changes))


def run_fine_tune(data, run_dir, train_loader=None, **changes):
    """(model, history) of fine_tune on the ViT mini-CLIP, as one process or as each of torchrun's would."""
    train_set, val_set, class_names = data
    model = build_random_clip("mini-vit", seed=0)
    train_loader = train_loader or batches.train_loader_for(train_set, RUN_BATCH, seed=0)
    history = train.fine_tune(model, train_loader, DataLoader(val_set, batch_size=8),
                              *run_config(class_names, run_dir, **changes))
    return model, history


class KilledInEpoch:
    """A train loader whose process dies (os._exit: no finally, no atexit) at the second batch of `epoch`."""

    def __init__(self, loader, epoch, out_dir):
        self.loader, self.epoch, self.out_dir, self.started = loader, epoch, out_dir, 0

    def __iter__(self):
        self.started += 1
        for step, batch in enumerate(self.loader, 1):
            if self.started == self.epoch and step == 2:
                Path(self.out_dir, "killed-at").write_text(str(time.time()))
                os._exit(3)
            yield batch

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # sampler, batch_size, dataset: the wrapped loader's
        return getattr(self.loader, name)


def run_worker(processes, data, out_dir, kill):
    """kill: a whole run (out_dir/two), a refused second run into it, then a run whose rank 0 dies in epoch 2
    (out_dir/killed); else the killed run resumed. Each process saves what fine_tune returned to it."""
    rank = processes.rank
    if kill:
        model, history = run_fine_tune(data, os.path.join(out_dir, "two"))
        torch.save({"history": history.to_dict("list"), "weights": model.state_dict()},
                   os.path.join(out_dir, f"two-rank{rank}.pt"))
        try:  # refused by rank 0's run_folder: every process must raise it, none may wait for the others
            run_fine_tune(data, os.path.join(out_dir, "two"))
        except checkpoints.RunFolderError as error:
            Path(out_dir, f"refused-rank{rank}.txt").write_text(str(error))
        loader = batches.shard(batches.train_loader_for(data[0], RUN_BATCH, seed=0), processes, seed=0)
        loader = KilledInEpoch(loader, 2, out_dir) if rank == 0 else loader
        run_fine_tune(data, os.path.join(out_dir, "killed"), train_loader=loader)
    else:
        model, history = run_fine_tune(data, os.path.join(out_dir, "killed"), resume=True)
        torch.save({"history": history.to_dict("list"), "weights": model.state_dict()},
                   os.path.join(out_dir, f"resumed-rank{rank}.pt"))
    distributed.cleanup()


def resume_worker(rank, port, data, out_dir):
    run_worker(join_torchrun_processes(rank, port), data, out_dir, kill=False)


@pytest.fixture(scope="module")
def runs(spawned):
    """The runs on one process and on two, the killed one's folder as the kill left it, and its resumption."""
    out_dir = spawned["dir"]
    after_kill = {"checkpoint": checkpoints.load_checkpoint(out_dir / "killed"),
                  "history": pd.read_csv(out_dir / "killed" / "history.csv")}
    mp.spawn(resume_worker, args=(free_port(), spawned["data"], str(out_dir)), nprocs=WORLD, join=True)
    load = lambda name: [torch.load(out_dir / f"{name}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {**spawned, "two": load("two"), "resumed": load("resumed"), "after_kill": after_kill}


def test_two_processes_fine_tune_to_the_weights_and_history_of_one(runs):
    one = runs["one"]
    for rank, two in enumerate(runs["two"]):
        history = pd.DataFrame(two["history"])
        for column in HISTORY_COLUMNS:
            assert history[column].tolist() == pytest.approx(one["history"][column].tolist(), rel=1e-5), column
        difference = max_difference(two["weights"], one["weights"])
        columns = ", ".join(f"{c} {(history[c] - one['history'][c]).abs().max():.1e}" for c in HISTORY_COLUMNS[2:])
        print(f"rank {rank}: 2 processes vs 1 after {RUN_EPOCHS} epochs: max |weight difference| {difference:.2e}; "
              f"max |history difference|: {columns}")
        assert difference <= RUN_WEIGHT_ATOL
    moved = max_difference(one["weights"], build_random_clip("mini-vit", seed=0).state_dict())
    assert moved > 100 * RUN_WEIGHT_ATOL
    assert one["history"]["train_loss"].iloc[0] != one["history"]["train_loss"].iloc[1]
    # Both processes trained the same weights and computed the same (gathered) losses and validation.
    first, second = runs["two"]
    assert max_difference(first["weights"], second["weights"]) == 0
    assert {k: v for k, v in first["history"].items() if k != "seconds"} == \
        {k: v for k, v in second["history"].items() if k != "seconds"}


def test_rank_0_alone_writes_the_run_folder(runs):
    run_dir = runs["dir"] / "two"
    written = pd.read_csv(run_dir / "history.csv")
    assert written["epoch"].tolist() == [1, 2]
    assert written["train_loss"].tolist() == pytest.approx(runs["two"][0]["history"]["train_loss"], rel=1e-12)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["batch_size"] == RUN_BATCH and record["steps_per_epoch"] == 2  # the global batch, not 4
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint.pt", "history.csv", "model.pt", "run.json"]
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert max_difference(saved, runs["two"][0]["weights"]) == 0  # loads in one process, no DDP prefix


def test_a_refusal_on_rank_0_is_raised_on_every_process(spawned):
    refusals = [(spawned["dir"] / f"refused-rank{rank}.txt").read_text() for rank in range(WORLD)]
    assert refusals[0] == refusals[1] and "already holds a run" in refusals[0]


def test_a_run_killed_mid_epoch_on_two_processes_resumes_to_the_uninterrupted_result(runs):
    assert runs["after_kill"]["checkpoint"]["epoch"] == 1 and runs["after_kill"]["history"]["epoch"].tolist() == [1]
    # The other process did not wait for its partner (the process group's timeout is 60 s).
    print(f"killed run: both processes gone {runs['gone_after_s']:.1f} s after rank 0 died "
          f"({type(runs['killed']).__name__})")
    assert runs["gone_after_s"] < 60
    for resumed, two in zip(runs["resumed"], runs["two"]):
        difference = max_difference(resumed["weights"], two["weights"])
        print(f"resumed vs uninterrupted on 2 processes: max |weight difference| {difference:.2e}")
        assert difference == 0
        for column in HISTORY_COLUMNS:
            assert resumed["history"][column] == two["history"][column], column
    written = pd.read_csv(runs["dir"] / "killed" / "history.csv")
    assert written["epoch"].tolist() == [1, 2]


def test_torchrun_runs_the_command_line_on_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=os.getcwd())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "clip_helpers.training.finetune", "--model", "mini", "--dataset", "shapes", "--epochs", "1",
               "--batch-size", "8", "--train-size", "16", "--val-size", "8", "--run-name", "ddp",
               "--data-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("history written to") == 1  # printed by rank 0 only
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("history.csv")] == [Path("runs/ddp/history.csv")]
    history = pd.read_csv(tmp_path / "runs" / "ddp" / "history.csv")
    assert history["step"].tolist() == [2]  # 16 images in global batches of 8, each process reading 4
    assert json.loads((tmp_path / "runs" / "ddp" / "run.json").read_text())["batch_size"] == 8
