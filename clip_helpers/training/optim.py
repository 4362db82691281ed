"""The optimiser and its schedule: AdamW without decay on gains and biases, linear warmup then cosine decay."""
import torch


def parameter_groups(model: torch.nn.Module, weight_decay: float, *others: torch.nn.Module) -> list[dict]:
    """Two AdamW groups: matrices decay; gains, biases, embeddings and logit_scale do not (shrinking them only hurts).
    `others`: modules trained with the model (a loss's own parameters: siglip.SigmoidLoss's bias)."""
    decay, no_decay = [], []
    named = [item for module in (model, *others) for item in module.named_parameters()]
    for name, parameter in named:
        if parameter.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config, *others: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW with config's lr, weight_decay, betas and eps (config: a config.TrainConfig), over the model's
    parameters and those of `others` (see parameter_groups)."""
    # The fused kernel updates every tensor in one pass instead of looping over them (see the README's benchmark).
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay, *others), lr=config.lr,
                             betas=config.betas, eps=config.eps, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warmup (fresh Adam moments are noisy) then cosine decay to zero, stepped once per batch."""
    warmup = min(max(1, round(warmup_fraction * total_steps)), max(1, total_steps - 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup)),
    ], milestones=[warmup])
