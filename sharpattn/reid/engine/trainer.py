"""The training loop every recipe shares (a recipe: ``sharpattn.reid.recipes``).

Per step: the recipe's loss on one batch under AMP, a finite check, backward, unscale, the global
gradient-norm clip (``optim.grad_clip``), the optimiser step; every ``train.diagnostics_every``
steps the masks and gradients of sharp attention blocks are probed. Per epoch: the recipe's
schedules, a CSV/TensorBoard record, an evaluation every ``train.eval_every`` epochs (and after
the last), ``best.pt`` at the best mAP, ``last.pt``.

Exact resumption. Everything random is a function of saved state: the sampler's batches depend
on (seed, epoch); each image's augmentation is seeded by its place in the epoch (data/loaders.py);
the global torch/numpy/Python RNG states (which the model's mask sampling may use) are saved per
process with the model, optimizer, grad scaler, epoch and the number of batches done. A run
stopped anywhere (Ctrl-C, SIGTERM, ``train.checkpoint_every``) and resumed with ``--resume`` ends
with the same parameters as a run never stopped (tested bit for bit on the CPU).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..config_checks import check_dataset_fits
from ..data import SeededImages, build_dataset, build_train_transform, train_loader
from ..evaluation import evaluate, evaluate_metrics, uses_learned_metrics
from ..recipes import get_recipe
from ..report.logs import RunLog
from ..report.summary import write_pictures, write_report
from .checkpoint import check_model_spec, load_checkpoint
from .diagnostics import EpochDiagnostics, gradient_statistics, mask_statistics, probing, sharpness_line
from .distributed import barrier, is_main_process, resolve_device, setup_distributed
from .optim import backward_and_step
from .run_folder import RunLock, claim
from .state import TrainState, one_based
from .stop import StopFlag, TrainingDiverged, TrainingInterrupted

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "train"]


class Trainer(TrainState):
    """Train one model with the config's recipe, writing into ``out_dir``.

    ``resume``: a checkpoint path or run folder to continue from. ``init_from``: a previous
    stage's loaded ``last.pt`` to start from (see ``stages.py``). ``stop_at``: ``(epoch, step)``
    after which to stop as if interrupted (tests). ``log``: a print function.
    """

    def __init__(self, cfg: Config, out_dir, resume=None, stop_at=None, log=print, init_from=None):
        self.cfg = cfg.validate()
        self.out_dir = Path(out_dir)
        self.stop_at, self.init_from = stop_at, init_from
        self.rank, self.world, self.local_rank = setup_distributed(cfg.train.device)
        self.main = self.rank == 0
        self._log = log
        self.device = resolve_device(cfg.train.device, self.local_rank)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.recipe = get_recipe(cfg.recipe)(cfg, self.device, self.world)
        self.resume_ckpt = load_checkpoint(resume) if resume else None
        self.spec = None  # built with the dataset (a classifier's size is the dataset's)
        if self.resume_ckpt is not None:  # refuse another model now, before anything is built
            self.spec = self.recipe.spec_before_data(self.resume_ckpt["model_spec"])
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
        check_dataset_fits(cfg.data, self.dataset, self.log)
        self.spec = self.recipe.model_spec(self.dataset)
        if self.resume_ckpt is not None:
            check_model_spec(self.resume_ckpt, self.spec)
        self.sampler = self.recipe.build_sampler(self.dataset)
        self.train_set = SeededImages(self.dataset.train, build_train_transform(
            cfg.data.height, cfg.data.width, erasing_p=cfg.data.random_erasing))
        self.raw_model = self.recipe.build_model(self.spec).to(self.device)
        # What the weights started from (recorded in checkpoints, never needed to rebuild them).
        if self.resume_ckpt is not None:
            self.initialised_from = self.resume_ckpt.get("initialised_from")
        elif self.init_from is not None:  # a previous stage's last.pt
            self.recipe.start_from(self.raw_model, self.init_from)
            self.initialised_from = str(Path(self.init_from.get("path", "")).resolve())
        else:
            self.initialised_from = self.recipe.initialise(self.raw_model)
        if cfg.train.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        # The optimiser first: building it decides what trains (a stage freezes parts), and DDP
        # syncs exactly the parameters that require gradients when it is built.
        self.optimizer = self.recipe.build_optimizer(self.raw_model)
        self.model = self.recipe.step_module(self.raw_model)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.main:
            self.check_room_for_checkpoints()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
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

    def _should_stop(self, flag):
        stop = flag.set or (self.stop_at is not None and (self.epoch, self.step) == tuple(self.stop_at))
        if self.world > 1:
            import torch.distributed as dist
            t = torch.tensor([1.0 if stop else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            stop = bool(t.item() > 0)
        return stop

    # -- the loop --------------------------------------------------------------------------------
    def fit(self):
        """Train to ``optim.epochs``; returns the summary dict (also written to summary.json).

        Resuming a finished run changes no file: it says so and returns the run's summary.
        """
        if self.finished():
            return self._already_finished()
        self._setup()
        self.logs = RunLog(self.out_dir, self.cfg, self.global_step, self.log) if self.main else None
        cfg = self.cfg
        self.log(f"{cfg.name}: {self.recipe.describe()} on {self.device} x{self.world}; "
                 f"{len(self.dataset.train)} training images, {self.dataset.num_train_pids} ids; "
                 f"batch {cfg.data.num_identities}x{cfg.data.num_instances}"
                 f"{' per process' if self.world > 1 else ''}, {cfg.optim.epochs} epochs -> {self.out_dir}")
        start_time = time.time()
        try:
            with StopFlag() as flag:
                while self.epoch < cfg.optim.epochs:
                    if not self._train_epoch(flag):
                        raise TrainingInterrupted(self.save_last())
                    self._end_epoch()
        finally:
            if self.logs is not None:
                self.logs.close()
        return self._finish(time.time() - start_time)

    def _train_epoch(self, flag):
        """One epoch from ``self.step`` on; False when stopped before its end."""
        cfg, e, recipe = self.cfg, self.epoch, self.recipe
        scalars = recipe.start_epoch(e, self.raw_model, self.optimizer)
        recipe.train_mode(self.raw_model)
        acc = self._epoch_acc or {"n": 0, "time_s": 0.0}
        diag = EpochDiagnostics(acc.setdefault("diagnostics", None))
        acc["diagnostics"] = diag.state
        self.sampler.set_epoch(e)
        total = len(self.sampler)
        loader = train_loader(self.train_set, self.sampler, cfg.train.seed, e, self.step, cfg.data.workers,
                              self.device.type == "cuda")
        bar = None
        if self.main and cfg.train.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, desc=f"{cfg.name} {e + 1}/{cfg.optim.epochs}",
                       leave=False, dynamic_ncols=True)
        t0 = time.time()
        stopped = False
        for images, pids, _ in loader:
            st, grad_norm = self._train_step(images, pids, diag)
            acc["n"] += 1
            for k in recipe.stat_keys:
                v = st[k]
                acc[k] = acc.get(k, 0.0) + (v if math.isfinite(v) else 0.0)
            if bar is not None:
                bar.update(1)
                shown = {k: f"{st[k]:.3g}" for k in recipe.progress_keys}
                bar.set_postfix(**shown, gnorm=f"{grad_norm:.2g}", **{k: f"{v:.3g}" for k, v in scalars.items()})
            if cfg.train.checkpoint_every and self.global_step % cfg.train.checkpoint_every == 0 \
                    and self.step < total:
                acc["time_s"] += time.time() - t0
                t0 = time.time()
                self._epoch_acc = acc
                self.save_last()
            if self.step < total and self._should_stop(flag):
                stopped = True
                break
        if bar is not None:
            bar.close()
        acc["time_s"] += time.time() - t0
        self._epoch_acc = acc
        if stopped:
            return False
        n = max(1, acc["n"])
        rec = {"epoch": e, **scalars, "time_s": acc["time_s"], "steps": acc["n"]}
        if self.train_set.skipped_in_epoch(e):  # images that broke after the dataset's check
            rec["unreadable_images"] = self.train_set.skipped_in_epoch(e)
        rec.update({k: acc.get(k, 0.0) / n for k in recipe.stat_keys})
        rec.update(diag.summary())
        self.history.append(rec)
        self._epoch_acc = None
        return True

    def _train_step(self, images, pids, diag):
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = torch.as_tensor(pids).to(self.device)
        every = cfg.train.diagnostics_every
        probe = self.main and every > 0 and self.global_step % every == 0
        with probing(self.raw_model, probe) as recorded:
            with self._amp_ctx():
                self.recipe.global_step = self.global_step
                loss, st = self.recipe.step(self.model, self.raw_model, images, pids)
            if not math.isfinite(st["loss"]):
                detail = ", ".join(f"{k} {st[k]}" for k in self.recipe.stat_keys if k != "loss")
                self._diverged(f"the loss is {st['loss']} ({detail})")
            # Under DDP the backward averages the gradients first: every process clips alike.
            scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
            try:
                grad_norm, clipped = backward_and_step(loss, self.optimizer, self.scaler, self.params,
                                                       cfg.optim.grad_clip)
            except FloatingPointError as e:
                self._diverged(f"the {e} is not finite")
        diag.add_step(grad_norm, clipped)
        st["grad_norm"] = grad_norm
        self.step += 1
        self.global_step += 1
        if self.logs is not None:
            if recorded is not None:
                masks, grads = recorded
                m_stats, g_stats = mask_statistics(masks), gradient_statistics(grads, scale)
                diag.add_probe(m_stats, g_stats)
                self.logs.blocks(m_stats, g_stats, self.global_step)
            self.logs.scalars("train", {k: st[k] for k in self.recipe.stat_keys}, self.global_step)
            self.logs.scalars("train", {"grad_norm": grad_norm, "grad_clipped": float(clipped)}, self.global_step)
        return st, grad_norm

    def _diverged(self, what):
        done = f"{self.out_dir / 'last.pt'} holds the end of epoch {self.epoch}" if self.epoch else "no epoch finished"
        raise TrainingDiverged(f"training diverged at epoch {self.epoch + 1}, step {self.step + 1} (global step "
                               f"{self.global_step + 1}): {what}; the step was not applied and {done}. Lower "
                               f"optim.lr (now {self.optimizer.param_groups[0]['lr']:.3g}), set optim.grad_clip, "
                               f"or use train.amp=none/bf16")

    def _evaluate(self, last):
        cfg = self.cfg
        floats = {k: t for k, t in self.raw_model.state_dict().items() if t.is_floating_point()}
        finite = torch.stack([torch.isfinite(t).all() for t in floats.values()]).tolist()  # one sync
        broken = [k for k, ok in zip(floats, finite) if not ok]
        if broken:  # e.g. batch-norm running statistics overflowed while the training loss stayed finite
            raise TrainingDiverged(f"training diverged by the end of epoch {self.epoch + 1}: the model holds "
                                   f"non-finite values in {len(broken)} tensors ({', '.join(broken[:3])}); "
                                   f"lower optim.lr (now {self.optimizer.param_groups[0]['lr']:.3g}) or set "
                                   f"optim.grad_clip")
        if last and uses_learned_metrics(cfg):  # eval.metrics: one row per metric
            return evaluate_metrics(self.raw_model, self.dataset, cfg, self.device, cfg.eval.metrics,
                                    cfg.train.progress, amp_ctx=self._amp_ctx(), save_dir=self.out_dir,
                                    log=self.log)
        return evaluate(self.raw_model, self.dataset, cfg, self.device, cfg.train.progress, amp_ctx=self._amp_ctx())

    def _end_epoch(self):
        cfg, e = self.cfg, self.epoch
        rec = self.history[-1]
        last = e + 1 == cfg.optim.epochs
        if last or (cfg.train.eval_every and (e + 1) % cfg.train.eval_every == 0):
            if self.main:
                metrics, self._distmat = self._evaluate(last)
                self.last_metrics = metrics
                rec.update({k: metrics[k] for k in ("rank1", "rank5", "mAP", "mINP")})
                self.logs.scalars("eval", {k: metrics[k] for k in ("rank1", "mAP", "mINP")}, self.global_step)
                if metrics["mAP"] > self.best["mAP"]:
                    self.best = {"mAP": metrics["mAP"], "rank1": metrics["rank1"], "epoch": e}
                    self._save_best()
            barrier()
        if self.main:
            self._report_epoch(rec)
        self.epoch += 1
        self.step = 0
        self.save_last()

    def _report_epoch(self, rec):
        cfg, e = self.cfg, self.epoch
        extra = "".join(f" {k} {rec[k]:.3f}" for k in rec if k not in ("lr",) and k in self._scalar_keys())
        msg = (f"epoch {e + 1}/{cfg.optim.epochs}: {self.recipe.epoch_summary(rec)} lr {rec['lr']:.2e}{extra}"
               f" |g| {rec['grad_norm']:.3g} (max {rec['grad_norm_max']:.3g}"
               + (f", clipped {100 * rec['clip_frac']:.0f}%" if cfg.optim.grad_clip is not None else "")
               + f") {rec['time_s']:.0f}s")
        if "rank1" in rec:
            msg += f" | rank-1 {100 * rec['rank1']:.1f} mAP {100 * rec['mAP']:.1f}"
        self.log(msg)
        masks_line = sharpness_line(rec)
        if masks_line:
            self.log(f"  masks, mean (<0.1/>0.9): {masks_line}")
        self.logs.scalars("train", {k: rec[k] for k in self._scalar_keys() if k in rec}, self.global_step)
        self.logs.scalars("epoch", {k: rec[k] for k in ("grad_norm", "grad_norm_max", "clip_frac")},
                          self.global_step)
        self.logs.flush()
        self.logs.write_csv(self.history, self._scalar_keys() + list(self.recipe.stat_keys))
        if cfg.train.pictures and "rank1" in rec:
            self.logs.plot_curves(self.history)

    def _scalar_keys(self):
        """The per-epoch schedule values the recipe logs (lr, tau, ...), in first-seen order."""
        keys = []
        for h in self.history:
            for k in h:
                if k in ("lr", "tau") or k.startswith("sched_"):
                    if k not in keys:
                        keys.append(k)
        return keys

    def _finish(self, elapsed):
        """Pictures and the final report (main process)."""
        cfg = self.cfg
        summary = {"name": cfg.name, "out_dir": str(self.out_dir), "metrics": self.last_metrics,
                   "best": one_based(self.best), "epochs": cfg.optim.epochs, "seconds": elapsed,
                   "model_spec": self.spec}
        if not self.main:
            return summary
        if cfg.train.pictures:
            pictures = write_pictures(self.raw_model, self.dataset, cfg, self.device, self.out_dir,
                                      distmat=getattr(self, "_distmat", None), log=self.log)
            summary["pictures"] = {k: str(v) for k, v in pictures.items() if v is not None}
            summary["pictures"].update(self.recipe.pictures(self.raw_model, self.dataset, self.out_dir, self.log))
        with open(self.out_dir / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        write_report(self.out_dir / "report.md", cfg, self.last_metrics, self.history, self.best, elapsed,
                     self.recipe.describe())
        return summary


def train(cfg, out_dir, resume=None, links=None, overwrite=False, **kwargs):
    """Train as configured; a config with ``stages`` trains each in turn (see ``stages.py``).

    ``out_dir`` is locked while the run writes it, and a new run (no ``resume``) refuses a
    folder that holds results unless ``overwrite`` (run_folder.py). ``links``: the
    :class:`~sharpattn.reid.engine.links.RunLinks` of the runs trained before this one in the
    same invocation, which ``model.weights: run:NAME`` names; the finished run is added.
    """
    log = kwargs.get("log", print)
    with RunLock(out_dir, enabled=is_main_process(), log=log):
        if resume is None and is_main_process():
            claim(out_dir, overwrite, log=log)
        if links is not None and resume is None:
            links.resolve(cfg)
        summary = _train(cfg, out_dir, resume, **kwargs)
    if links is not None:
        links.add(summary)
    return summary


def _train(cfg, out_dir, resume, **kwargs):
    if cfg.stages:
        from .stages import train_stages
        return train_stages(cfg, out_dir, resume=resume, **kwargs)
    return Trainer(cfg, out_dir, resume=resume, **kwargs).fit()
