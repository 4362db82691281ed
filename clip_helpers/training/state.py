"""The training state: the model, its optimiser, the learning-rate schedule and the gradient scaler, saved and
restored as one."""
from dataclasses import dataclass

import torch


@dataclass
class TrainingState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object  # a torch.optim.lr_scheduler
    scaler: object  # a torch.amp.GradScaler (disabled without fp16)
    loss: torch.nn.Module | None = None  # a loss with parameters of its own (siglip.SigmoidLoss's bias); None: clip_loss

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                **({"loss": self.loss.state_dict()} if self.loss is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # a disabled scaler saves {}
            self.scaler.load_state_dict(state["scaler"])
        if self.loss is not None:  # a resume with another loss is refused before this (run.json records it)
            self.loss.load_state_dict(state["loss"])
