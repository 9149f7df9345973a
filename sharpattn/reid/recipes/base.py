"""What a recipe is: everything about training one model that is not the loop.

The loop (:class:`sharpattn.reid.engine.Trainer`) owns epochs, steps, AMP, the grad scaler,
clipping, stopping, checkpoints, evaluation and logs. A recipe builds the model, the batch
sampler and the optimiser, sets the per-epoch schedules, and computes one step's loss::

    class MyRecipe(Recipe):
        name = "mine"
        stat_keys = ("loss", "my_term")

        def step(self, model, raw_model, images, pids):
            out = model(images)
            loss = ...
            return loss, {"loss": float(loss), "my_term": ...}

    register_recipe(MyRecipe)          # config: recipe: mine

docs/training.md "Adding a recipe" walks through one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import IdentityBatchSampler
from ..engine.checkpoint import load_model_state
from ..engine.schedule import lr_schedule
from ..engine.links import linked_run, unresolved_link_error
from ..modeling import build_model, initialise_from, model_spec

__all__ = ["Recipe", "build_optimizer"]


def build_optimizer(parameters, optim_cfg):
    """``optim.name``: Adam (SAN) or SGD with momentum (AAA-Net) over ``parameters``."""
    parameters = list(parameters)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                               weight_decay=optim_cfg.weight_decay)
    return torch.optim.Adam(parameters, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)


class Recipe:
    """Base recipe: P x K identity batches, ``optim.*`` optimiser and lr schedule, the model of
    ``model.*``. Subclasses set :attr:`name` and :attr:`stat_keys` and implement :meth:`step`."""

    #: the ``recipe`` config value that selects this class
    name = None
    #: per-step statistics averaged into each epoch's record (log.csv columns); "loss" first
    stat_keys = ("loss",)
    #: the statistics the progress bar shows
    progress_keys = ("loss",)
    #: model_spec kwargs that come from the dataset (left out of the check of a resumed run's
    #: model before the dataset is read; checked after)
    dataset_keys = ()

    def __init__(self, cfg, device, world=1):
        self.cfg, self.device, self.world = cfg, device, world
        self.lr_schedule = lr_schedule(cfg.optim)
        #: steps done before the current one (the loop sets it before each ``step``)
        self.global_step = 0

    # -- building ----------------------------------------------------------------------------
    def model_spec(self, dataset):
        """What ``build_model`` builds; stored in checkpoints (resume checks it). ``dataset`` is
        None when resuming checks the spec before reading the data (see ``dataset_keys``)."""
        return model_spec(self.cfg.model)

    def spec_before_data(self, saved_spec):
        """The spec to check a checkpoint's against before the dataset is read: ``model_spec``
        with its ``dataset_keys`` taken from the checkpoint (resume and ``sharpattn-eval``)."""
        spec = self.model_spec(None)
        for key in self.dataset_keys:
            spec["kwargs"][key] = saved_spec.get("kwargs", {}).get(key)
        return spec

    def build_model(self, spec):
        return build_model(spec)

    def build_sampler(self, dataset):
        cfg = self.cfg
        return IdentityBatchSampler(dataset.train, cfg.data.num_identities, cfg.data.num_instances,
                                    seed=cfg.train.seed)

    def trainable_parameters(self, model):
        """The parameters this recipe updates (a stage that freezes parts leaves them out)."""
        return [p for p in model.parameters() if p.requires_grad]

    def build_optimizer(self, model):
        return build_optimizer(self.trainable_parameters(model), self.cfg.optim)

    def initialise(self, model):
        """Load ``model.weights`` into a run that starts fresh (neither resumed nor a later stage);
        returns the file's absolute path, or None when the model starts from scratch."""
        weights = self.cfg.model.weights
        if not weights:
            return None
        if linked_run(weights) is not None:  # train() resolves it within an invocation
            raise unresolved_link_error(self.cfg)
        initialise_from(model, weights)
        return str(Path(weights).expanduser().resolve())

    def start_from(self, model, checkpoint):
        """Load the weights a previous stage ended with (``checkpoint``: its loaded ``last.pt``)."""
        load_model_state(model, checkpoint["model"], checkpoint.get("path", ""))

    # -- each epoch and step -----------------------------------------------------------------
    def start_epoch(self, epoch, model, optimizer):
        """Set this epoch's schedules; returns the scalars to log (``lr`` at least)."""
        lr = self.lr_schedule(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return {"lr": lr}

    def train_mode(self, model):
        """Put the model in training mode (a recipe with frozen parts keeps their BN in eval)."""
        model.train()

    def step_module(self, raw_model):
        """The module :meth:`step` runs as ``model``; under torchrun the loop wraps it in
        DistributedDataParallel, which averages the gradients of what its forward computed. A
        recipe whose step calls several of the model's parts returns one module whose forward
        is the whole step (see the AAA-Net recipe); the default is the model itself."""
        return raw_model

    def step(self, model, raw_model, images, pids):
        """``(loss to backpropagate, {stat: float})`` for one batch; ``model`` is
        :meth:`step_module`'s module, DDP-wrapped under torchrun; ``raw_model`` is the model."""
        raise NotImplementedError

    def pictures(self, model, dataset, out_dir, log):
        """Recipe-specific pictures of a finished run: ``{name: path}``."""
        return {}

    # -- words -------------------------------------------------------------------------------
    def describe(self):
        """One line naming the model, for the log's first line and report.md."""
        return f"recipe {self.name}, model {self.cfg.model.arch}"

    def epoch_summary(self, rec):
        """The recipe's part of the epoch line."""
        return f"loss {rec['loss']:.4f}"
