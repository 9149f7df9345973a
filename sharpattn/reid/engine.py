"""The SAN training and evaluation loop (SAN IV-B).

One step: a P x K batch, embeddings, batch-hard triplet loss over the batch (gathered from all
processes under DDP) plus ``mu * sharpattn.tv_penalty(model)``, Adam. Per epoch: the lr of
:class:`~sharpattn.reid.schedule.LRSchedule`, tau of eq. 9, a CSV/TensorBoard record, the
training-curve picture, an evaluation every ``train.eval_every`` epochs, and ``last.pt``.

Exact resumption. Everything random is a function of saved state: the sampler's batches depend
on (seed, epoch); each image's augmentation is drawn from a generator seeded with
(seed, epoch, rank, batch, position), whatever the number of DataLoader workers; the global
torch/numpy/Python RNG states (which the model's mask sampling may use) are saved per process
with the model, optimizer, grad scaler, epoch and the number of batches done. A run stopped
anywhere (Ctrl-C, SIGTERM, ``train.checkpoint_every``) and resumed with ``--resume`` ends with
the same parameters as a run never stopped (tested bit for bit on the CPU).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from sharpattn import set_temperature, tv_penalty

from .checkpoint import (FORMAT, CheckpointError, capture_rng, check_model_spec, load_checkpoint,
                         load_model_state, restore_rng, save_checkpoint)
from .config import Config, config_to_dict
from .datasets import (CUHK03, MSMT17, DukeMTMCreID, ImageDataset, ImageFolderReID, Market1501,
                       make_synthetic)
from .datasets.image_dataset import read_image
from .diagnostics import (EpochDiagnostics, block_columns, gradient_statistics, mask_statistics, probing,
                          sharpness_line)
from .features import extract_features
from .losses import all_gather_with_grad, batch_hard_triplet_loss
from .metric_eval import evaluate_metrics, metrics_table, uses_learned_metrics
from .metrics import compute_distance_matrix, evaluate_cuhk03_classic, evaluate_rank, re_ranking
from .metrics.learned import metric_distances
from .modeling import build_model, model_spec
from .optim import backward_and_step
from .sampler import IdentityBatchSampler
from .schedule import LRSchedule, temperature_schedule
from .transforms import build_test_transform, build_train_transform

__all__ = ["TrainingInterrupted", "Trainer", "build_dataset", "compute_loss", "evaluate", "train"]


class TrainingInterrupted(Exception):
    """Training stopped early (signal or ``stop_at``); ``last.pt`` holds the state to resume."""

    def __init__(self, checkpoint):
        super().__init__(f"training interrupted; state saved to {checkpoint}")
        self.checkpoint = checkpoint


# ----------------------------------------------------------------------------------------------
# data

def synthetic_root(data_cfg):
    s = data_cfg.synthetic
    ipc = "-".join(str(v) for v in s.images_per_cam)
    name = (f"synthetic_ids{s.num_ids}_cams{s.num_cams}_ipc{ipc}_{s.height}x{s.width}"
            f"_d{s.num_distractors}_j{s.num_junk}_seed{s.seed}"
            f"{'' if s.outfits is None else f'_outfits{s.outfits}'}"
            f"{'' if s.cue_scale == 1 else f'_cue{s.cue_scale:g}'}")
    return Path(os.path.expanduser(data_cfg.root)) / name


def build_dataset(data_cfg, rank=0):
    """The dataset named by the config (the synthetic one is written on first use)."""
    name, root = data_cfg.name, os.path.expanduser(data_cfg.root)
    if name == "synthetic":
        out = synthetic_root(data_cfg)
        if rank == 0 and not (out / ".complete").exists():
            s = data_cfg.synthetic
            make_synthetic(out, num_ids=s.num_ids, num_cams=s.num_cams,
                           images_per_cam=tuple(s.images_per_cam), height=s.height, width=s.width,
                           num_distractors=s.num_distractors, num_junk=s.num_junk, seed=s.seed,
                           outfits=s.outfits, cue_scale=s.cue_scale)
            (out / ".complete").write_text("written by sharpattn.reid.make_synthetic\n")
        _barrier()
        return Market1501(out)
    if name == "market1501":
        return Market1501(root)
    if name == "dukemtmcreid":
        return DukeMTMCreID(root)
    if name in ("cuhk03_labeled", "cuhk03_detected"):
        return CUHK03(root, labeled=name == "cuhk03_labeled", protocol=data_cfg.cuhk03_protocol,
                      split_id=data_cfg.cuhk03_split)
    if name == "msmt17":
        return MSMT17(root, include_val=data_cfg.msmt17_include_val)
    if name == "folder":
        return ImageFolderReID(root)
    raise ValueError(f"unknown dataset {name!r}")


class _SeededImages(Dataset):
    """Items are ``(index, seed)``: the transform draws from torch's RNG seeded with ``seed``,
    so an image's augmentation depends on where it sits in the epoch, not on worker state."""

    def __init__(self, items, transform):
        self.items, self.transform = list(items), transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key
        path, pid, camid = self.items[index]
        img = read_image(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = self.transform(img)
        return img, pid, camid


class _EpochBatches(Sampler):
    """This process's batches of one epoch from ``start`` on, each index paired with its seed."""

    def __init__(self, sampler, seed, epoch, start=0):
        self.sampler, self.seed, self.epoch, self.start = sampler, seed, epoch, start

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        for b, batch in enumerate(self.sampler):
            if b < self.start:
                continue
            seeds = np.random.SeedSequence([self.seed, self.epoch, self.sampler.rank, b]).generate_state(
                len(batch), dtype=np.uint64)
            yield [(int(i), int(s) & ((1 << 63) - 1)) for i, s in zip(batch, seeds)]

    def __len__(self):
        self.sampler.set_epoch(self.epoch)
        return max(0, len(self.sampler) - self.start)


# ----------------------------------------------------------------------------------------------
# distributed helpers

def _dist_on():
    return dist.is_available() and dist.is_initialized()


# Process 0 evaluates (a 10-crop evaluation of a large gallery takes many minutes) while the others
# wait at a barrier: the collective timeout must outlast it (NCCL's default is 10 minutes).
DIST_TIMEOUT = datetime.timedelta(hours=2)


def _barrier():
    if _dist_on():
        if dist.get_backend() == "nccl":  # name this process's GPU, not whichever is current
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def setup_distributed(device_pref="auto"):
    """Initialise torch.distributed from torchrun's environment (``WORLD_SIZE`` > 1).

    NCCL when CUDA is used, gloo otherwise; with NCCL each process first makes its own GPU
    (``LOCAL_RANK``) the current device, so that its collectives do not all run on cuda:0.
    Returns ``(rank, world_size, local_rank)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _dist_on():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=DIST_TIMEOUT)
    if _dist_on():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


def resolve_device(pref, local_rank=0):
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={pref!r} but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


# ----------------------------------------------------------------------------------------------
# loss and evaluation

def compute_loss(model, images, pids, cfg, raw_model=None):
    """Forward one batch and return ``(loss_to_backprop, stats)``.

    ``loss = triplet + mu * tv``: the batch-hard triplet loss over the embeddings of every
    process (all-gathered; gradients reach this process's own samples) plus the TV penalty of
    this process's forward. Under DDP, which averages gradients over the W processes, the
    triplet term is multiplied by W before backward: every process computes the same triplet
    loss but only its own samples' share of its gradient, so the average of the shares is 1/W
    of the true gradient. The TV term is a per-element mean over the process's batch, so the
    average over processes is the mean over the global batch. ``stats`` holds the unscaled
    values as floats.
    """
    raw_model = model if raw_model is None else raw_model
    emb = model(images)
    emb = emb.float()
    world = dist.get_world_size() if _dist_on() else 1
    all_emb = all_gather_with_grad(emb)
    all_pids = all_gather_with_grad(pids.to(emb.device)) if world > 1 else pids.to(emb.device)
    triplet, st = batch_hard_triplet_loss(all_emb, all_pids, margin=cfg.loss.margin,
                                          soft_margin=cfg.loss.soft_margin, return_stats=True)
    tv = tv_penalty(raw_model).float() if cfg.model.tv and cfg.loss.mu else emb.new_zeros(())
    loss = triplet * world + cfg.loss.mu * tv
    st["triplet"] = st.pop("loss")
    st["tv"] = float(tv.detach())
    st["tv_weighted"] = cfg.loss.mu * st["tv"]
    st["loss"] = st["triplet"] + st["tv_weighted"]
    return loss, st


def _test_loader(items, cfg, ten_crop):
    tf = build_test_transform(cfg.data.height, cfg.data.width, ten_crop=ten_crop)
    workers = min(cfg.data.workers, 4)
    return DataLoader(ImageDataset(items, tf), batch_size=max(1, cfg.eval.batch_size // (10 if ten_crop else 1)),
                      shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available())


def evaluate(model, dataset, cfg, device, progress=True, ten_crop=None, rerank=None, amp_ctx=None,
             metric=None, features=None):
    """Embed query and gallery, score them with the dataset's protocol.

    Returns ``(metrics, distmat)``; ``metrics`` has ``rank1``, ``rank5``, ``rank10``, ``mAP``,
    ``mINP`` (fractions), ``cmc`` (list), the protocol and the options used. ``metric``: a
    fitted learned metric (``sharpattn.reid.XQDA`` ...) instead of ``eval.metric``;
    ``features``: ``((qf, qp, qc), (gf, gp, gc))`` already extracted (see ``metric_eval``).
    """
    ten_crop = cfg.eval.ten_crop if ten_crop is None else ten_crop
    rerank = cfg.eval.rerank if rerank is None else rerank
    ctx = amp_ctx if amp_ctx is not None else nullcontext()
    if features is None:
        with ctx:
            features = [extract_features(model, _test_loader(items, cfg, ten_crop), device, progress)
                        for items in (dataset.query, dataset.gallery)]
    (qf, qp, qc), (gf, gp, gc) = features
    qf, gf = qf.float(), gf.float()
    if metric is not None:
        distmat = metric_distances(metric, qf, gf, rerank=rerank, progress=progress)
    elif rerank:
        distmat = re_ranking(qf, gf, progress=progress)
    else:
        distmat = compute_distance_matrix(qf, gf, metric=cfg.eval.metric)
    classic = cfg.data.name.startswith("cuhk03") and cfg.data.cuhk03_protocol == "classic"
    if classic:
        r = evaluate_cuhk03_classic(distmat, qp, gp, qc, gc)
        protocol = "cuhk03 classic (single gallery shot, 20 draws)"
    else:
        r = evaluate_rank(distmat, qp, gp, qc, gc, ap_mode=cfg.eval.ap_mode)
        protocol = f"Market-1501 style, {cfg.eval.ap_mode} AP"
    cmc = np.asarray(r["cmc"], dtype=float)
    metrics = {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
               "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": float(r["mAP"]),
               "mINP": float(r["mINP"]), "cmc": [float(c) for c in cmc[:20]],
               "protocol": protocol, "ten_crop": bool(ten_crop), "rerank": bool(rerank),
               "metric": cfg.eval.metric if metric is None else metric.name,
               "num_query": len(dataset.query), "num_gallery": len(dataset.gallery)}
    return metrics, distmat


# ----------------------------------------------------------------------------------------------
# the trainer

class _StopFlag:
    """SIGINT/SIGTERM set a flag; training stops after the current step and saves."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        if sys.platform != "win32" and _is_main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True
        print(f"\n[sharpattn] signal {signum}: stopping after this step and saving a checkpoint "
              f"(again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _is_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


def _resolve_runs_folder(cfg, out_dir):
    """``{runs}`` in ``model.weights`` is the folder that holds this run, so that a config can start
    from another run of the same invocation (the demo's fine-tuned models from its baseline)."""
    weights = cfg.model.weights
    if not weights or "{runs}" not in weights:
        return
    cfg.model.weights = weights.replace("{runs}", str(Path(out_dir).parent))
    if not Path(cfg.model.weights).is_file():
        from .config import ConfigError
        raise ConfigError(f"model.weights={weights!r} is {cfg.model.weights}, which does not exist: train that "
                          f"run first, in the same folder (e.g. sharpattn-train --config synthetic/baseline "
                          f"--config synthetic/san_ft), or give model.weights a file")


class Trainer:
    """Train one model as configured, writing into ``out_dir``.

    ``resume``: a checkpoint path or run folder to continue from. ``stop_at``: ``(epoch, step)``
    after which to stop as if interrupted (tests). ``log``: a print function.
    """

    def __init__(self, cfg: Config, out_dir, resume=None, stop_at=None, log=print):
        self.cfg = cfg.validate()
        self.out_dir = Path(out_dir)
        _resolve_runs_folder(cfg, self.out_dir)
        self.stop_at = stop_at
        self.rank, self.world, self.local_rank = setup_distributed(cfg.train.device)
        self.main = self.rank == 0
        self._log = log
        self.device = resolve_device(cfg.train.device, self.local_rank)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.spec = model_spec(cfg.model)
        self.resume_ckpt = load_checkpoint(resume) if resume else None
        if self.resume_ckpt is not None:
            check_model_spec(self.resume_ckpt, self.spec)

    def log(self, *a):
        if self.main:
            self._log(*a)

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self):
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # same initial weights on every process
        np.random.seed(cfg.train.seed)
        self.dataset = build_dataset(cfg.data, self.rank)
        if cfg.data.num_identities > self.dataset.num_train_pids:
            raise ValueError(f"data.num_identities={cfg.data.num_identities} but {self.dataset.name} has only "
                             f"{self.dataset.num_train_pids} training identities")
        self.sampler = IdentityBatchSampler(self.dataset.train, cfg.data.num_identities, cfg.data.num_instances,
                                            seed=cfg.train.seed)
        self.train_set = _SeededImages(self.dataset.train, build_train_transform(cfg.data.height, cfg.data.width))
        self.raw_model = build_model(self.spec).to(self.device)
        if cfg.train.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        self.model = self.raw_model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.raw_model, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.lr_schedule = LRSchedule(cfg.optim.lr, cfg.optim.epochs, cfg.optim.decay_start,
                                      cfg.optim.final_lr_factor)
        self.tau_schedule = temperature_schedule(cfg.tau.tau0, cfg.tau.alpha, cfg.tau.tau_min)
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history, self.best = [], {"mAP": -1.0, "epoch": -1}
        self.last_metrics = None
        self._epoch_acc = None
        if self.resume_ckpt is not None:
            self._load_state(self.resume_ckpt)

    def _amp_ctx(self):
        amp = self.cfg.train.amp
        if amp == "none":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self):
        rng = capture_rng()
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        return {
            "format": FORMAT, "kind": "train", "model_spec": self.spec,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "global_step": self.global_step, "world_size": self.world, "rng": rngs,
            "history": self.history, "best": dict(self.best), "metrics": self.last_metrics,
            "config": config_to_dict(self.cfg), "epoch_acc": self._epoch_acc,
            "torch_version": str(torch.__version__),
        }

    def save_last(self):
        state = self._state()  # collective under DDP: every process takes part
        if self.main:
            save_checkpoint(state, self.out_dir / "last.pt")
        _barrier()
        return self.out_dir / "last.pt"

    def _save_best(self):
        save_checkpoint({"format": FORMAT, "kind": "model", "model_spec": self.spec,
                         "model": self.raw_model.state_dict(), "config": config_to_dict(self.cfg),
                         "metrics": self.last_metrics, "epoch": self.epoch}, self.out_dir / "best.pt")

    def _load_state(self, ckpt):
        if ckpt.get("kind") != "train":
            raise CheckpointError(f"{ckpt['path']} holds model weights only (best.pt); resume from last.pt")
        load_model_state(self.raw_model, ckpt["model"], ckpt["path"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.global_step = ckpt["epoch"], ckpt["step"], ckpt["global_step"]
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        self.last_metrics = ckpt.get("metrics")
        self._epoch_acc = ckpt.get("epoch_acc")
        rngs = ckpt["rng"]
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank])
        else:
            self.log(f"[sharpattn] checkpoint written by {len(rngs)} processes, resuming with {self.world}: "
                     f"random states are not restored, so the run will not match an uninterrupted one")
        self.log(f"resumed from {ckpt['path']} at epoch {self.epoch + 1}, step {self.step}")

    # -- logging -------------------------------------------------------------------------------
    def _open_logs(self):
        self.tb = None
        if not self.main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "config.yaml", "w") as f:
            import yaml
            yaml.safe_dump(config_to_dict(self.cfg), f, sort_keys=False)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.global_step or None)
        except Exception as e:  # noqa: BLE001 - tensorboard is optional
            self.log(f"[sharpattn] TensorBoard logging off ({e})")

    def _tb_blocks(self, mask_stats, grad_stats):
        for name in sorted(set(mask_stats) | set(grad_stats)):
            for key, value in {**mask_stats.get(name, {}), **grad_stats.get(name, {})}.items():
                group = "mask" if key.startswith("mask") else "grad"
                self.tb.add_scalar(f"{group}/{name}/{key}", value, self.global_step)

    def _write_csv(self):
        keys = ["epoch", "lr", "tau", "loss", "triplet", "tv", "tv_weighted", "precision", "dist_ap", "dist_an",
                "grad_norm", "grad_norm_max", "clip_frac", "time_s", "rank1", "rank5", "mAP", "mINP"]
        if not any("tau" in h for h in self.history):
            keys.remove("tau")
        keys += block_columns(self.history)
        tmp = self.out_dir / ".log.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for h in self.history:
                w.writerow({k: (h["epoch"] + 1 if k == "epoch" else h.get(k, "")) for k in keys})
        os.replace(tmp, self.out_dir / "log.csv")

    def _plot_curves(self):
        from .plots import plot_training_curves
        try:
            plot_training_curves(self.history, self.out_dir / "curves.png", title=self.cfg.name)
        except Exception as e:  # noqa: BLE001 - a picture must not stop training
            self.log(f"[sharpattn] could not draw curves.png: {e}")

    # -- the loop --------------------------------------------------------------------------------
    def _loader(self, epoch, start):
        batches = _EpochBatches(self.sampler, self.cfg.train.seed, epoch, start)
        workers = self.cfg.data.workers
        # An own generator: creating the iterator must not consume the global RNG.
        return DataLoader(self.train_set, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          persistent_workers=False)

    def _should_stop(self, flag):
        stop = flag.set or (self.stop_at is not None and (self.epoch, self.step) == tuple(self.stop_at))
        if self.world > 1:
            t = torch.tensor([1.0 if stop else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            stop = bool(t.item() > 0)
        return stop

    def finished(self):
        """True when resuming a run that already trained ``optim.epochs`` epochs."""
        ck = self.resume_ckpt
        return ck is not None and ck["epoch"] >= self.cfg.optim.epochs and not ck["step"]

    def fit(self):
        """Train to ``optim.epochs``; returns the summary dict (also written to summary.json).

        Resuming a finished run changes no file: it says so and returns the run's summary.
        """
        if self.finished():
            return self._already_finished()
        self._setup()
        self._open_logs()
        cfg = self.cfg
        if self.main:
            self.log(f"{cfg.name}: {cfg.model.arch} blocks={cfg.model.blocks} context={cfg.model.context} "
                     f"residual={cfg.model.residual} tv={cfg.model.tv} on {self.device} x{self.world}; "
                     f"{len(self.dataset.train)} training images, {self.dataset.num_train_pids} ids; "
                     f"batch {cfg.data.num_identities}x{cfg.data.num_instances}"
                     f"{' per process' if self.world > 1 else ''}, {cfg.optim.epochs} epochs -> {self.out_dir}")
        start_time = time.time()
        with _StopFlag() as flag:
            while self.epoch < cfg.optim.epochs:
                self._train_epoch(flag)
                if self._stopped:
                    path = self.save_last()
                    if self.tb is not None:
                        self.tb.close()
                    raise TrainingInterrupted(path)
                self._end_epoch()
        if self.tb is not None:
            self.tb.close()
        return self._finish(time.time() - start_time)

    def _train_epoch(self, flag):
        cfg, e = self.cfg, self.epoch
        lr, tau = self.lr_schedule(e), float(self.tau_schedule(e))
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        has_tau = set_temperature(self.raw_model, tau) > 0
        self.model.train()
        acc = self._epoch_acc or {"n": 0, "time_s": 0.0}
        diag = EpochDiagnostics(acc.setdefault("diagnostics", None))
        acc["diagnostics"] = diag.state
        self.sampler.set_epoch(e)
        total = len(self.sampler)
        loader = self._loader(e, self.step)
        bar = None
        if self.main and cfg.train.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, desc=f"{cfg.name} {e + 1}/{cfg.optim.epochs}",
                       leave=False, dynamic_ncols=True)
        self._stopped = False
        t0 = time.time()
        for images, pids, _ in loader:
            images = images.to(self.device, non_blocking=True)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pids = torch.as_tensor(pids).to(self.device)
            every = cfg.train.diagnostics_every
            probe = self.main and every > 0 and self.global_step % every == 0
            with probing(self.raw_model, probe) as recorded:
                with self._amp_ctx():
                    loss, st = compute_loss(self.model, images, pids, cfg, self.raw_model)
                if not math.isfinite(st["loss"]):
                    raise FloatingPointError(f"loss is {st['loss']} at epoch {e + 1}, step {self.step + 1} "
                                             f"(triplet {st['triplet']}, tv {st['tv']}); lower optim.lr or use "
                                             f"train.amp=none/bf16")
                # Under DDP the backward averages the gradients first: every process clips alike.
                scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
                grad_norm, clipped = backward_and_step(loss, self.optimizer, self.scaler,
                                                       list(self.raw_model.parameters()), cfg.optim.grad_clip)
            diag.add_step(grad_norm, clipped)
            st["grad_norm"] = grad_norm
            if recorded is not None:
                masks, grads = recorded
                m_stats, g_stats = mask_statistics(masks), gradient_statistics(grads, scale)
                diag.add_probe(m_stats, g_stats)
                if self.tb is not None:
                    self._tb_blocks(m_stats, g_stats)
            self.step += 1
            self.global_step += 1
            acc["n"] += 1
            for k in ("loss", "triplet", "tv", "tv_weighted", "precision", "dist_ap", "dist_an"):
                v = st[k]
                acc[k] = acc.get(k, 0.0) + (v if math.isfinite(v) else 0.0)
            if self.tb is not None:
                for k in ("loss", "triplet", "tv", "precision", "grad_norm"):
                    self.tb.add_scalar(f"train/{k}", st[k], self.global_step)
                self.tb.add_scalar("train/grad_clipped", float(clipped), self.global_step)
            if bar is not None:
                bar.update(1)
                extra = {"tau": f"{tau:.3f}"} if has_tau else {}
                bar.set_postfix(loss=f"{st['loss']:.3f}", prec=f"{st['precision']:.2f}", gnorm=f"{grad_norm:.2g}",
                                **extra, lr=f"{lr:.1e}")
            if cfg.train.checkpoint_every and self.global_step % cfg.train.checkpoint_every == 0 \
                    and self.step < total:
                acc["time_s"] += time.time() - t0
                t0 = time.time()
                self._epoch_acc = acc
                self.save_last()
            if self.step < total and self._should_stop(flag):
                acc["time_s"] += time.time() - t0
                self._epoch_acc = acc
                self._stopped = True
                break
        if bar is not None:
            bar.close()
        if not self._stopped:
            acc["time_s"] += time.time() - t0
            n = max(1, acc["n"])
            rec = {"epoch": e, "lr": lr, "tau": tau, "time_s": acc["time_s"], "steps": acc["n"]}
            for k in ("loss", "triplet", "tv", "tv_weighted", "precision", "dist_ap", "dist_an"):
                rec[k] = acc.get(k, 0.0) / n
            rec.update(diag.summary())
            if not has_tau:
                rec.pop("tau")  # a model without sharp masks has no temperature
            self.history.append(rec)
            self._epoch_acc = None

    def _end_epoch(self):
        cfg, e = self.cfg, self.epoch
        rec = self.history[-1]
        last = e + 1 == cfg.optim.epochs
        if last or (cfg.train.eval_every and (e + 1) % cfg.train.eval_every == 0):
            if self.main:
                if last and uses_learned_metrics(cfg):  # eval.metrics: one row per metric
                    metrics, self._distmat = evaluate_metrics(self.raw_model, self.dataset, cfg, self.device,
                                                              cfg.eval.metrics, cfg.train.progress,
                                                              amp_ctx=self._amp_ctx(), save_dir=self.out_dir,
                                                              log=self.log)
                else:
                    metrics, self._distmat = evaluate(self.raw_model, self.dataset, cfg, self.device,
                                                      cfg.train.progress, amp_ctx=self._amp_ctx())
                self.last_metrics = metrics
                rec.update({k: metrics[k] for k in ("rank1", "rank5", "mAP", "mINP")})
                if self.tb is not None:
                    for k in ("rank1", "mAP", "mINP"):
                        self.tb.add_scalar(f"eval/{k}", metrics[k], self.global_step)
                if metrics["mAP"] > self.best["mAP"]:
                    self.best = {"mAP": metrics["mAP"], "rank1": metrics["rank1"], "epoch": e}
                    self._save_best()
            _barrier()
        if self.main:
            msg = (f"epoch {e + 1}/{cfg.optim.epochs}: loss {rec['loss']:.4f} (triplet {rec['triplet']:.4f}, "
                   f"mu*tv {rec['tv_weighted']:.4f}) prec {rec['precision']:.2f} lr {rec['lr']:.2e}"
                   + (f" tau {rec['tau']:.3f}" if "tau" in rec else "")
                   + f" |g| {rec['grad_norm']:.3g} (max {rec['grad_norm_max']:.3g}"
                   + (f", clipped {100 * rec['clip_frac']:.0f}%" if cfg.optim.grad_clip is not None else "")
                   + f") {rec['time_s']:.0f}s")
            if "rank1" in rec:
                msg += f" | rank-1 {100 * rec['rank1']:.1f} mAP {100 * rec['mAP']:.1f}"
            self.log(msg)
            masks_line = sharpness_line(rec)
            if masks_line:
                self.log(f"  masks, mean (<0.1/>0.9): {masks_line}")
            if self.tb is not None:
                self.tb.add_scalar("train/lr", rec["lr"], self.global_step)
                if "tau" in rec:
                    self.tb.add_scalar("train/tau", rec["tau"], self.global_step)
                for k in ("grad_norm", "grad_norm_max", "clip_frac"):
                    self.tb.add_scalar(f"epoch/{k}", rec[k], self.global_step)
                self.tb.flush()
            self._write_csv()
            if cfg.train.pictures and "rank1" in rec:
                self._plot_curves()
        self.epoch += 1
        self.step = 0
        self.save_last()

    def _already_finished(self):
        ck = self.resume_ckpt
        self.log(f"{self.cfg.name}: {self.out_dir} is finished ({ck['epoch']} of {self.cfg.optim.epochs} epochs "
                 f"done); nothing to train, no file changed. To train on, ask for more epochs: "
                 f"--resume {self.out_dir} optim.epochs={ck['epoch'] + 10}")
        path = Path(ck["path"]).parent / "summary.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"name": self.cfg.name, "out_dir": str(self.out_dir), "metrics": ck.get("metrics"),
                "best": _one_based(ck["best"]), "epochs": ck["epoch"], "model_spec": self.spec}

    def _finish(self, elapsed):
        """Pictures and the final report (main process)."""
        cfg = self.cfg
        summary = {"name": cfg.name, "out_dir": str(self.out_dir), "metrics": self.last_metrics,
                   "best": _one_based(self.best), "epochs": cfg.optim.epochs, "seconds": elapsed,
                   "model_spec": self.spec}
        if not self.main:
            return summary
        if cfg.train.pictures:
            pictures = write_pictures(self.raw_model, self.dataset, cfg, self.device, self.out_dir,
                                      distmat=getattr(self, "_distmat", None), log=self.log)
            summary["pictures"] = {k: str(v) for k, v in pictures.items() if v is not None}
        with open(self.out_dir / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        write_report(self.out_dir / "report.md", cfg, self.last_metrics, self.history, self.best, elapsed)
        return summary


def _one_based(best):
    """The best evaluation with its epoch counted from 1, as in log.csv and report.md."""
    best = dict(best)
    if best.get("epoch", -1) >= 0:
        best["epoch"] += 1
    else:
        best["epoch"] = None
    return best


def write_pictures(model, dataset, cfg, device, out_dir, distmat=None, log=print):
    """ranks.png (ranked lists) and masks.png (attention masks; none for a model without blocks)."""
    from .plots import plot_attention_masks
    from .visualize import plot_ranked_lists
    out = {}
    out_dir = Path(out_dir)
    try:
        if distmat is None:
            _, distmat = evaluate(model, dataset, cfg, device, progress=False, ten_crop=False, rerank=False)
        out["ranks"] = plot_ranked_lists(distmat, dataset.query, dataset.gallery, out_dir / "ranks.png",
                                         num_queries=cfg.eval.ranked_queries, seed=cfg.train.seed,
                                         cell=(128, 64), title=f"{cfg.name} on {cfg.data.name}",
                                         distractor_pid=getattr(dataset, "distractor_pid", None))
    except Exception as e:  # noqa: BLE001 - pictures are a report, not the result
        log(f"[sharpattn] could not draw ranks.png: {e}")
    try:
        tf = build_test_transform(cfg.data.height, cfg.data.width, ten_crop=False)
        k = min(cfg.eval.mask_images, len(dataset.query))  # spread over the query list (identities)
        items = [dataset.query[int(i)] for i in np.linspace(0, len(dataset.query) - 1, k)] if k else []
        if items:
            images = torch.stack([tf(read_image(p)) for p, _, _ in items])
            out["masks"] = plot_attention_masks(model, images, out_dir / "masks.png",
                                                titles=[f"id {pid} cam {c + 1}" for _, pid, c in items])
    except Exception as e:  # noqa: BLE001
        log(f"[sharpattn] could not draw masks.png: {e}")
    return out


def format_metrics_table(rows):
    """Markdown table of ``[(name, metrics), ...]``."""
    lines = ["| model | rank-1 | rank-5 | rank-10 | mAP | mINP |", "|---|---|---|---|---|---|"]
    for name, m in rows:
        if not m:
            lines.append(f"| {name} | - | - | - | - | - |")
            continue
        lines.append(f"| {name} | {100 * m['rank1']:.1f} | {100 * m['rank5']:.1f} | {100 * m['rank10']:.1f} | "
                     f"{100 * m['mAP']:.1f} | {100 * m['mINP']:.1f} |")
    return "\n".join(lines)


def write_report(path, cfg, metrics, history, best, elapsed):
    lines = [f"# {cfg.name}", "",
             f"Model `{cfg.model.arch}` blocks={cfg.model.blocks} context={cfg.model.context} "
             f"residual={cfg.model.residual} tv={cfg.model.tv}; data `{cfg.data.name}`; "
             f"{cfg.optim.epochs} epochs in {elapsed / 60:.1f} min.", ""]
    if metrics:
        lines += [f"Final evaluation ({metrics['protocol']}, 10-crop {metrics['ten_crop']}, "
                  f"re-ranking {metrics['rerank']}; {metrics['num_query']} queries, "
                  f"{metrics['num_gallery']} gallery images):", "",
                  format_metrics_table([(cfg.name, metrics)]), ""]
        if metrics.get("by_metric"):  # eval.metrics: fitted on the training split's features
            lines += ["Metrics (XQDA / KISSME fitted on the training split's features):", "",
                      metrics_table(cfg.name, metrics), ""]
    if best.get("epoch", -1) >= 0:
        lines += [f"Best mAP {100 * best['mAP']:.1f} at epoch {best['epoch'] + 1} (best.pt).", ""]
    if history:
        h = history[-1]
        lines += [f"Last epoch: loss {h['loss']:.4f}, triplet precision {h['precision']:.2f}, "
                  f"lr {h['lr']:.2e}" + (f", tau {h['tau']:.3f}" if "tau" in h else "") + ".", ""]
    lines += ["Files: `last.pt` (resume), `best.pt` (weights), `log.csv`, `tensorboard/`, `curves.png`, "
              "`ranks.png`, `masks.png`, `config.yaml`, `summary.json`.", ""]
    Path(path).write_text("\n".join(lines))


def train(cfg, out_dir, resume=None, **kwargs):
    """Train as configured; see :class:`Trainer`."""
    return Trainer(cfg, out_dir, resume=resume, **kwargs).fit()
