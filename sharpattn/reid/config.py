"""Training configuration: nested dataclasses, YAML files and ``section.key=value`` overrides.

A YAML file holds any subset of the sections below; ``base: other.yaml`` (or a list) merges
other files first, relative to the file's own folder, so each Table I row is a few lines over a
shared recipe. Unknown keys and values of the wrong type raise :class:`ConfigError` naming the
key, the file it came from and the valid keys. Packaged configs (``sharpattn/reid/configs``)
are found by name: ``market1501/san`` is ``configs/market1501/san.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["Config", "ConfigError", "CONFIG_DIR", "register_section", "available_configs", "load_config", "apply_overrides",
           "config_from_dict", "config_to_dict", "resolve_config_path"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

AMP_MODES = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """A config file or override is not valid; the message says which key and why."""


@dataclass
class SyntheticConfig:
    """Arguments of :func:`sharpattn.reid.make_synthetic` (data.name = synthetic)."""
    num_ids: int = 24
    num_cams: int = 4
    images_per_cam: list = field(default_factory=lambda: [2, 4])
    height: int = 128
    width: int = 64
    num_distractors: int = 20
    num_junk: int = 5
    seed: int = 0
    outfits: typing.Optional[int] = None  # n random outfits (easier) instead of 3 shared ones
    cue_scale: float = 1.0           # size of the identity badge / bag
    test_draw: int = 0               # > 0: same training set, a fresh test half (make_synthetic)


@dataclass
class DataConfig:
    name: str = "synthetic"          # one of DATASETS
    root: str = "data"               # the dataset's folder or its parent; synthetic data is written here
    cuhk03_protocol: str = "classic"  # "classic" (the SAN paper) or "new" (CUHK03-NP)
    cuhk03_split: int = 0            # classic protocol: which of the 20 test splits
    msmt17_include_val: bool = True
    height: int = 256                # network input size
    width: int = 128
    num_identities: int = 64         # P identities per batch (per process under DDP)
    num_instances: int = 4           # K images per identity
    random_erasing: float = 0.0      # probability of random erasing per training image (AAA-Net Table 5)
    workers: int = 4                 # DataLoader worker processes
    strict: bool = False             # unreadable images found before the run are an error, not skipped with a warning
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    arch: str = "san_resnet50"       # a name registered in sharpattn.reid.modeling.MODELS
    blocks: list = field(default_factory=lambda: [1, 2, 3, 4])  # [] = plain ResNet-50 baseline
    context: list = field(default_factory=lambda: [1, 2, 3])   # blocks with a context-aware unit
    residual: bool = True            # cross-feature interaction (1 + M) * T (CIL); False: M * T
    tv: bool = True                  # TV penalty of the blocks (eq. 6-8)
    mask: str = "sharp"
    embedding_dim: int = 128
    weights: typing.Optional[str] = None  # local torchvision ResNet-50 ImageNet weights (.pth)
    # SharpMask gradient bounds (docs/training.md "Why SAN collapsed"); off = the paper's formula
    range_eps: typing.Optional[float] = None   # eps + range_eps * (hi - lo) in eq. 3
    logit_floor: typing.Optional[float] = None  # p clamped to [f, 1 - f] inside the logit
    detach_range: bool = False       # no gradient through the plane's min / max


@dataclass
class LossConfig:
    margin: float = 0.5
    soft_margin: bool = False        # log(1 + exp(d_ap - d_an)) instead of the hinge
    mu: float = 0.1                  # weight of the TV penalty (eq. 8)


@dataclass
class OptimConfig:
    name: str = "adam"               # adam (SAN) or sgd (AAA-Net, with momentum)
    momentum: float = 0.9            # sgd only
    schedule: str = "hermans"        # hermans (SAN: constant, then exponential decay) or step
    step_size: int = 2               # step schedule: lr * gamma every step_size epochs
    gamma: float = 0.1
    lr: float = 2e-4
    weight_decay: float = 5e-4
    epochs: int = 150
    decay_start: int = 100           # lr constant until here, then exponential decay
    final_lr_factor: float = 0.001   # lr * final_lr_factor at the last epoch
    grad_clip: typing.Optional[float] = None  # global gradient-norm clip before each step; null: off


@dataclass
class TauConfig:
    tau0: float = 1.0
    alpha: float = 0.008
    tau_min: float = 0.5


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"             # auto (cuda if available), cpu, cuda, cuda:1, ...
    amp: str = "none"                # none, bf16, fp16
    channels_last: bool = False
    eval_every: int = 10             # evaluate every k epochs (and after the last one); 0: only at the end
    checkpoint_every: int = 0        # also save last.pt every n steps (0: at epoch ends only)
    progress: bool = True            # tqdm progress bars
    pictures: bool = True            # curves.png (at evaluations and the end), ranks.png, masks.png
    threads: int = 0                 # torch.set_num_threads (0: torch's default)
    diagnostics_every: int = 50      # mask / gradient statistics every n steps (0: off); see diagnostics.py


@dataclass
class EvalConfig:
    ten_crop: bool = True            # SAN: standard 10-crop testing
    rerank: bool = False             # k-reciprocal re-ranking (Zhong et al. 2017)
    metric: str = "euclidean"
    metrics: list = field(default_factory=lambda: ["euclidean"])  # final evaluation: + xqda, kissme (one row each)
    ap_mode: str = "standard"        # "standard" (torchreid) or "market" (official MATLAB code)
    batch_size: int = 64
    ranked_queries: int = 8          # rows of the ranked-list picture
    mask_images: int = 2             # images (column groups) in the attention-mask picture


#: a recipe's own config section: top-level key -> dataclass (see register_section)
SECTIONS = {}


def register_section(key, cls):
    """Let configs hold a top-level section ``key`` parsed into dataclass ``cls`` (a recipe's own
    options); read it with ``cfg.section(key)``."""
    SECTIONS[key] = cls
    return cls


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs"         # runs go to <output_dir>/<name>
    recipe: str = "san"              # a name registered in sharpattn.reid.recipes.RECIPES
    # Several stages: a list of mappings {name: ..., <section>: {...}}, each overriding this
    # config for one stage; stage i starts from stage i-1's weights (engine/stages.py).
    stages: list = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tau: TauConfig = field(default_factory=TauConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # recipe sections that were set or read, by key (not a config key itself)
    sections: dict = field(default_factory=dict, repr=False)
    stage_name: typing.Optional[str] = field(default=None, repr=False)

    def section(self, key):
        """The recipe section ``key`` (its defaults when the config does not set it)."""
        if key not in SECTIONS:
            raise ConfigError(f"no config section {key!r} is registered; known: {', '.join(sorted(SECTIONS))}")
        if key not in self.sections:
            self.sections[key] = SECTIONS[key]()
        return self.sections[key]

    def stage_configs(self):
        """One validated config per entry of ``stages`` (this config with the stage's sections)."""
        base = config_to_dict(self)
        base.pop("stages")
        out = []
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
                raise ConfigError(f"config key 'stages[{i}]': each stage is a mapping with a 'name', got {stage!r}")
            overrides = {k: v for k, v in stage.items() if k != "name"}
            cfg = config_from_dict(_deep_merge(_copy(base), overrides), origin=f"stage {stage['name']!r}")
            cfg.stage_name = stage["name"]
            cfg.name = f"{self.name}/{stage['name']}"
            out.append(cfg.validate())
        return out

    def validate(self):
        """Check values that a type alone does not constrain; raises :class:`ConfigError`."""
        from .config_checks import check_config
        check_config(self)
        return self


def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_of(cls, name):
    return typing.get_type_hints(cls)[name]


def _coerce(value, typ, key, origin):
    """Check/convert a YAML value for a field of type ``typ``."""
    where = f" (from {origin})" if origin else ""
    opt = typing.get_origin(typ) is typing.Union and type(None) in typing.get_args(typ)
    if opt:
        if value is None:
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}'{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}'{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}'{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}'{where}: expected a string, got {value!r}")
    if typ is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        raise ConfigError(f"config key '{key}'{where}: expected a list, got {value!r}")
    return value


def _unknown(key, cls, prefix):
    names = [n for n in _fields(cls) if n not in ("sections", "stage_name")]
    if cls is Config:
        names += sorted(SECTIONS)
    close = difflib.get_close_matches(key.split(".")[-1], names, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    section = f"'{prefix[:-1]}'" if prefix else "the top level"
    return f"unknown config key '{key}'{hint}; valid keys in {section}: {', '.join(names)}"


def _update(obj, mapping, prefix="", origin=None):
    """Set fields of dataclass ``obj`` from a nested mapping, checking keys and types."""
    if not isinstance(mapping, dict):
        where = f" (from {origin})" if origin else ""
        raise ConfigError(f"config section '{prefix[:-1] or '<top>'}'{where} must be a mapping, got {mapping!r}")
    fields = _fields(type(obj))
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(obj, Config) and k not in fields:
            from . import recipes  # noqa: F401  (registers the packaged recipes' sections)
        if isinstance(obj, Config) and k in SECTIONS:
            _update(obj.section(k), v, f"{key}.", origin)
            continue
        if k in ("sections", "stage_name") and isinstance(obj, Config):
            raise ConfigError(_unknown(key, type(obj), prefix))
        if k not in fields:
            where = f" in {origin}" if origin else ""
            raise ConfigError(_unknown(key, type(obj), prefix) + where)
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _update(current, v, f"{key}.", origin)
        else:
            setattr(obj, k, _coerce(v, _type_of(type(obj), k), key, origin))


def config_from_dict(d, origin=None):
    cfg = Config()
    _update(cfg, d or {}, origin=origin)
    return cfg


def config_to_dict(cfg):
    """Plain nested dict (lists, not tuples): what checkpoints and ``config.yaml`` store; recipe
    sections appear as top-level sections."""
    d = dataclasses.asdict(cfg)
    sections = d.pop("sections")
    d.pop("stage_name")
    d.update(sections)
    return d


def _copy(d):
    import copy
    return copy.deepcopy(d)


def available_configs():
    """Names of the packaged configs (``market1501/san``, ``synthetic/san``, ...)."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml")
                  if not p.name.startswith("_"))


def resolve_config_path(name):
    """A config file path: an existing file, or a packaged config name."""
    p = Path(os.path.expanduser(str(name)))
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    close = difflib.get_close_matches(str(name), available_configs(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"config {name!r} is neither a file nor a packaged config.{hint} "
                      f"Packaged configs: {', '.join(available_configs())}")


def _read_yaml(path, seen=()):
    """The merged mapping of a YAML file and its ``base`` files."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config {path}: 'base' files include each other in a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = {}
    for b in bases:
        bp = (path.parent / b) if not os.path.isabs(b) else Path(b)
        if not bp.is_file():
            raise ConfigError(f"config {path}: base file {b!r} not found (looked at {bp})")
        _deep_merge(merged, _read_yaml(bp, seen + (path,)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def load_config(name=None, overrides=()):
    """Config from a file or packaged name (``None``: the defaults, i.e. the SAN recipe) with
    ``section.key=value`` overrides applied, validated."""
    cfg = Config()
    if name is not None:
        path = resolve_config_path(name)
        _update(cfg, _read_yaml(path), origin=str(path))
        if "name" not in _read_yaml(path):
            cfg.name = Path(path).stem
    apply_overrides(cfg, overrides)
    return cfg.validate()


def apply_overrides(cfg, overrides):
    """Apply ``["optim.lr=1e-4", "model.blocks=[1,2]", ...]``; values are parsed as YAML. An
    override also replaces the same key where a stage of ``stages`` sets it;
    ``stages.<name>.optim.lr=...`` sets it in that stage only (checked when the stage is built)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value: {e}") from e
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) > 2:  # stages.<name>.<section>.<key>: one stage
            _override_one_stage(cfg.stages, parts[1], parts[2:], value, item)
            continue
        nested = value
        for p in reversed(parts):
            nested = {p: nested}
        _update(cfg, nested, origin=f"override {item!r}")
        if len(parts) > 1:
            _override_stages(cfg.stages, parts, value)
    return cfg


def _override_one_stage(stages, name, parts, value, item):
    stage = next((s for s in stages if isinstance(s, dict) and s.get("name") == name), None)
    if stage is None:
        names = ", ".join(str(s.get("name")) for s in stages if isinstance(s, dict)) or "none"
        raise ConfigError(f"override {item!r}: no stage named {name!r} (stages: {names})")
    node = stage
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: stage {name!r} sets {p!r} to a value, not a section")
    node[parts[-1]] = value


def _override_stages(stages, parts, value):
    """A command-line ``section.key=value`` wins over a stage's own setting of that key too
    (``optim.epochs=1`` cuts every stage to one epoch)."""
    for stage in stages:
        node = stage
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = value
