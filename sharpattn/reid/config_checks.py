"""The checks a config's types alone do not make: ranges, names, and how sections agree."""

from __future__ import annotations

import math

from .config import AMP_MODES, ConfigError

__all__ = ["check_config", "check_dataset_fits"]


def check_config(cfg):
    """Raise :class:`ConfigError` naming the first key whose value is not allowed."""
    from .data import DATASETS
    from .recipes import RECIPES

    def bad(key, msg):
        raise ConfigError(f"config key '{key}': {msg}")

    if cfg.model.weights and "{runs}" in cfg.model.weights:
        bad("model.weights", f"{cfg.model.weights!r}: the {{runs}} placeholder is gone; name the earlier run of "
                             f"the same command instead, e.g. model.weights=run:baseline")
    if cfg.recipe not in RECIPES:
        bad("recipe", f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
    if cfg.data.name not in DATASETS:
        bad("data.name", f"unknown dataset {cfg.data.name!r}; choose one of {', '.join(sorted(DATASETS))}")
    if not 0 <= cfg.data.random_erasing <= 1:
        bad("data.random_erasing", f"must be a probability in [0, 1], got {cfg.data.random_erasing}")
    if cfg.optim.name not in ("adam", "sgd"):
        bad("optim.name", f"must be adam or sgd, got {cfg.optim.name!r}")
    if cfg.optim.schedule not in ("hermans", "step"):
        bad("optim.schedule", f"must be hermans or step, got {cfg.optim.schedule!r}")
    if cfg.optim.step_size < 1 or not 0 < cfg.optim.gamma <= 1:
        bad("optim.step_size", "step_size must be >= 1 and gamma in (0, 1]")
    if cfg.data.cuhk03_protocol not in ("classic", "new"):
        bad("data.cuhk03_protocol", f"must be 'classic' or 'new', got {cfg.data.cuhk03_protocol!r}")
    if cfg.train.amp not in AMP_MODES:
        bad("train.amp", f"must be one of {', '.join(AMP_MODES)}, got {cfg.train.amp!r}")
    for key in ("data.num_identities", "data.num_instances", "optim.epochs", "data.height",
                "data.width", "eval.batch_size"):
        sec, k = key.split(".")
        if getattr(getattr(cfg, sec), k) < 1:
            bad(key, f"must be >= 1, got {getattr(getattr(cfg, sec), k)}")
    if cfg.data.num_identities < 2:
        bad("data.num_identities", "a triplet batch needs at least 2 identities")
    if cfg.optim.schedule == "hermans" and not 0 <= cfg.optim.decay_start <= cfg.optim.epochs:
        bad("optim.decay_start", f"must be in 0..optim.epochs ({cfg.optim.epochs}), got {cfg.optim.decay_start}")
    if not (math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0):  # NaN passes "<= 0"
        bad("optim.lr", f"must be a finite number > 0, got {cfg.optim.lr}")
    if not (math.isfinite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0):
        bad("optim.weight_decay", f"must be a finite number >= 0, got {cfg.optim.weight_decay}")
    if not (0 <= cfg.optim.momentum < 1):
        bad("optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    if not 0 <= cfg.train.seed < 2**32:  # numpy's seeds
        bad("train.seed", f"must be in 0..2^32-1, got {cfg.train.seed}")
    if cfg.data.workers < 0:
        bad("data.workers", f"must be >= 0 (0: load in the training process), got {cfg.data.workers}")
    if cfg.train.threads < 0:
        bad("train.threads", f"must be >= 0 (0: torch's default), got {cfg.train.threads}")
    if cfg.model.embedding_dim < 1:
        bad("model.embedding_dim", f"must be >= 1, got {cfg.model.embedding_dim}")
    if not (math.isfinite(cfg.loss.margin) and cfg.loss.margin >= 0):
        bad("loss.margin", f"must be a finite number >= 0, got {cfg.loss.margin}")
    if not (math.isfinite(cfg.loss.mu) and cfg.loss.mu >= 0):
        bad("loss.mu", f"must be a finite number >= 0, got {cfg.loss.mu}")
    if not 0 < cfg.optim.final_lr_factor <= 1:
        bad("optim.final_lr_factor", f"must be in (0, 1], got {cfg.optim.final_lr_factor}")
    if cfg.eval.ap_mode not in ("standard", "market"):
        bad("eval.ap_mode", f"must be 'standard' or 'market', got {cfg.eval.ap_mode!r}")
    if cfg.eval.metric not in ("euclidean", "sqeuclidean", "cosine"):
        bad("eval.metric", f"must be euclidean, sqeuclidean or cosine, got {cfg.eval.metric!r}")
    if not cfg.eval.metrics or any(m not in ("euclidean", "xqda", "kissme") for m in cfg.eval.metrics):
        bad("eval.metrics", f"must list some of euclidean, xqda, kissme, got {cfg.eval.metrics}")
    for key in ("tau0", "tau_min", "alpha"):
        value = getattr(cfg.tau, key)
        if not (math.isfinite(value) and (value > 0 or key == "alpha" and value >= 0)):
            bad(f"tau.{key}", f"must be a finite number {'>= 0' if key == 'alpha' else '> 0'}, got {value}")
    if any(b not in (1, 2, 3, 4) for b in cfg.model.blocks):
        bad("model.blocks", f"blocks are numbered 1..4, got {cfg.model.blocks}")
    if any(c not in cfg.model.blocks for c in cfg.model.context):
        bad("model.context", f"context units {cfg.model.context} must be on sharp attention blocks "
                             f"{cfg.model.blocks}")
    if cfg.optim.grad_clip is not None and not (math.isfinite(cfg.optim.grad_clip) and cfg.optim.grad_clip > 0):
        bad("optim.grad_clip", f"must be null (off) or a finite number > 0, got {cfg.optim.grad_clip}")
    if cfg.train.diagnostics_every < 0:
        bad("train.diagnostics_every", f"must be >= 0, got {cfg.train.diagnostics_every}")
    if cfg.train.eval_every < 0 or cfg.train.checkpoint_every < 0:
        bad("train.eval_every", "eval_every and checkpoint_every must be >= 0")


def check_dataset_fits(data_cfg, dataset, log=print):
    """What the batch settings ask of the dataset just read: too many identities per batch is an
    error; more images per identity than most identities have is a warning (the sampler repeats
    their images in every batch)."""
    import statistics
    from collections import Counter

    if data_cfg.num_identities > dataset.num_train_pids:
        raise ConfigError(f"config key 'data.num_identities': {data_cfg.num_identities} identities per batch, but "
                          f"{dataset.name} has {dataset.num_train_pids} training identities")
    per_id = sorted(Counter(pid for _, pid, _ in dataset.train).values())
    if per_id and data_cfg.num_instances > statistics.median(per_id):
        log(f"[sharpattn] warning: data.num_instances={data_cfg.num_instances} images per identity, but half of "
            f"{dataset.name}'s training identities have {statistics.median(per_id):g} or fewer: their images "
            f"repeat within each batch")
