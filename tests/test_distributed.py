"""Two CPU processes (gloo, 127.0.0.1) against one process on the same global batch: same loss, same gradients
of every parameter, same weights after a few AdamW steps. The model is the ViT mini-CLIP: its LayerNorms
make the comparison exact (a ResNet tower's BatchNorm would see 4 images instead of 8; see wrap_model).

Tolerances (fp32): loss rtol 1e-6; each parameter's gradient within 1e-5 of its largest element (measured:
1.1e-6, 4.8e-7 absolute); weights after 3 AdamW steps within 1e-2 x lr = 1e-5 (measured: 4.9e-7; 4.6e-6
in a variant of the batch). The differences come only from summing in
another order (4 images' features computed together, then 8). The weights' tolerance is in units of lr
because Adam divides each gradient by its own running size: an element whose gradient is zero in exact
arithmetic (the key bias of attention: softmax ignores a shift shared by all keys) gets rounding noise
divided by rounding noise, a step of up to lr in either run. Adam's scale invariance also means the
weights test cannot see a gradient scaled by a constant: the gradient test is the one that would.
"""
import copy
import math
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from clip_helpers import device, distributed, optim, train
from clip_helpers.losses import clip_loss
from clip_helpers.models import build_random_clip
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


def worker(rank, port, out_dir):
    """One of torchrun's processes, its environment set as torchrun would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if sys.platform == "linux":
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface only
    torch.set_num_threads(1)
    processes = distributed.init_from_env(device="cpu")
    own = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)  # the contiguous chunk rule of ShardedSampler
    result = {"processes": processes}
    try:
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
    finally:
        distributed.cleanup()
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
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


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
    one = list(distributed.ShardedSampler(dataset, 6, num_replicas=1, rank=0, seed=5))
    shards = [list(distributed.ShardedSampler(dataset, 3, num_replicas=2, rank=r, seed=5)) for r in range(2)]
    assert len(one) == 18 and all(len(s) == 9 for s in shards)  # 3 global batches of 6; the last 5 items dropped
    for b in range(3):  # rank order reassembles the global batch one process reads
        assert shards[0][3 * b:3 * b + 3] + shards[1][3 * b:3 * b + 3] == one[6 * b:6 * b + 6]
    assert sorted(one) == sorted(set(one))
    sampler = distributed.ShardedSampler(dataset, 6, num_replicas=1, rank=0, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) != one and list(sampler) == list(sampler)


def test_batches_that_do_not_split_are_refused():
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.local_batch_size(10, 3)
    with pytest.raises(ValueError, match="smaller batch size"):
        distributed.train_loader(torch.utils.data.TensorDataset(torch.arange(5)), 8)


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env(device="cpu") == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env(device="cpu")
