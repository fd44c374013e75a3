"""The Training tab's settings: one dataclass, its YAML file, and the ``ldm`` commands (phases) it turns into.

The YAML file is an ordinary training config (sections ``training``, ``diffusion``, ``unet``...) plus an ``app``
section with the tab's fields that are not part of the config (data folder, preprocess, latent folder, autoencoder,
run name). Loading a plain ``configs/*.yaml`` works too: keys the tab has no control for go to "extra settings".
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ldm.app.jobs import Phase
from ldm.app.workspace import Workspace
from ldm.choices import LOSS_LABELS, OPTIMIZER_LABELS, UNET_PRESETS
from ldm.config import Config, ConfigError, flatten, from_dict, load_config, parse_override, to_dict
from ldm.data.manifest import MANIFEST, Manifest
from ldm.errors import UserError
from ldm.run_folder import RunFolder
from ldm.utils import atomic_write_text

TRAIN_HERE = "train one here"  # autoencoder choice: run `ldm train-vae` on the data folder first
PREPROCESS = ("yes", "no")  # "yes": build the latent cache from the data folder first; "no": use the latent folder
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _config_key(key: str, default: Any, labels: Mapping[str, str] | None = None, what: str | None = None) -> Any:
    """A settings field that stands for the config key ``key``. With ``labels`` (config name -> label) the field holds
    the label the tab shows; ``what`` names the field in errors (default: its name)."""
    return field(default=default, metadata={"key": key, "labels": labels, "what": what})


@dataclass
class TrainSettings:
    """Every control of the Training tab, by name; the field order is the order of the app's API parameters."""

    data_dir: str = ""  # folder of class subfolders of images (used when preprocess is "yes")
    preprocess: str = "yes"  # one of PREPROCESS
    latent_dir: str = ""  # latent cache folder (written when preprocessing, read otherwise)
    autoencoder: str = TRAIN_HERE  # autoencoder folder / hub id, or TRAIN_HERE
    epochs: int = _config_key("training.epochs", 0)  # passes over the cache (0 = no epoch limit)
    batch_size: int = _config_key("training.batch_size", 64)  # latents per step
    learning_rate: float = _config_key("training.learning_rate", 3e-4)  # peak learning rate
    loss: str = _config_key("diffusion.loss", "MSE", LOSS_LABELS)  # MSE | MAE | Huber
    optimizer: str = _config_key("training.optimizer", "AdamW", OPTIMIZER_LABELS)  # AdamW | Adam | SGD
    preset: str = _config_key("unet.preset", "small", dict(zip(UNET_PRESETS, UNET_PRESETS)), "model preset")
    ema: bool = _config_key("training.ema", True)  # EMA of the weights
    label_dropout: float = _config_key("diffusion.label_dropout", 0.1)  # guidance dropout: share of classless steps
    max_minutes: float = _config_key("training.max_minutes", 10.0)  # wall-clock budget (0 = none)
    max_steps: int = _config_key("training.max_steps", 0)  # step budget (0 = none)
    run_name: str = "my-run"  # runs/<run_name>
    extra: str = ""  # more key=value settings, one per line or space separated
    processes: int = 1  # training processes, one per GPU (`accelerate launch`); offered with more than one GPU

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names in order: the app's API parameters and :meth:`values` follow it."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def choices(cls, name: str) -> list[str] | None:
        """The labels choice field ``name`` offers (its table's, from :mod:`ldm.choices`); None for a free field."""
        labels = next(f.metadata.get("labels") for f in fields(cls) if f.name == name)
        return None if labels is None else list(labels.values())

    @classmethod
    def from_values(cls, *values: Any) -> TrainSettings:
        """Settings from the UI's values (in :meth:`names` order), with the numbers coerced and checked."""
        if len(values) != len(cls.names()):
            raise UserError(f"expected {len(cls.names())} settings ({', '.join(cls.names())}), got {len(values)}")
        s = cls(**dict(zip(cls.names(), values)))
        try:
            for f in fields(cls):
                number = {"int": int, "float": float}.get(f.type)  # annotations are strings here (__future__)
                if number is not None:
                    setattr(s, f.name, number(getattr(s, f.name) or 0))
        except (TypeError, ValueError) as e:
            raise UserError(f"a number field holds something else: {e}") from None
        s.preprocess = "yes" if s.preprocess in (True, "yes", "Yes") else "no"
        s.ema = bool(s.ema)
        for text in (s.data_dir, s.latent_dir, s.autoencoder, s.run_name, s.extra):
            if text is not None and not isinstance(text, str):
                raise UserError(f"expected text, got {text!r}")
        s.data_dir, s.latent_dir = (s.data_dir or "").strip(), (s.latent_dir or "").strip()
        s.autoencoder, s.run_name = (s.autoencoder or "").strip(), (s.run_name or "").strip()
        return s

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.names()]

    def extra_overrides(self) -> list[str]:
        """The "extra settings" box as a list of ``key=value`` strings (lines or spaces separate them)."""
        out = []
        for line in (self.extra or "").splitlines():
            line = line.split("#", 1)[0].strip()
            tokens = line.split()
            # "a=1 b=2" on one line is two settings; "unet.kwargs={layers_per_block: 1}" is one
            out += tokens if all("=" in t for t in tokens) else [line]
        for text in out:
            parse_override(text)  # ConfigError naming the bad item
        return out

    def overrides(self) -> list[str]:
        """The settings as dotted config overrides (extra settings last, so they win)."""
        out = []
        for f in fields(self):
            if "key" not in f.metadata:
                continue
            value, labels = getattr(self, f.name), f.metadata["labels"]
            if labels is not None:
                names = {label: name for name, label in labels.items()}
                if value not in names:
                    what = f.metadata["what"] or f.name
                    raise UserError(f"{what} {value!r} unknown; accepted: {', '.join(names)}")
                value = names[value]
            out.append(f"{f.metadata['key']}={str(value).lower() if isinstance(value, bool) else value}")
        if self.batch_size < 1:
            raise UserError("batch size must be at least 1")
        if not self.learning_rate > 0:
            raise UserError("learning rate must be above 0 (e.g. 0.0003)")
        if not 0 <= self.label_dropout < 1:
            raise UserError("guidance dropout must be in [0, 1) (0.1 is usual)")
        if self.epochs < 0 or self.max_minutes < 0 or self.max_steps < 0:
            raise UserError("epochs, max minutes and max steps must be 0 (no limit) or more")
        return out + self.extra_overrides()

    def config(self) -> Config:
        """The resolved training config (defaults + these settings); ConfigError for a bad extra setting."""
        return load_config(None, self.overrides())


# config key -> (settings field, config name -> label or None) of the keys the tab has controls for; everything
# else in a loaded YAML goes to "extra settings"
_SHOWN = {f.metadata["key"]: (f.name, f.metadata["labels"]) for f in fields(TrainSettings) if "key" in f.metadata}
# the fields that are no config key go to the YAML's ``app`` section (the extra settings are config keys already)
_APP_KEYS = tuple(f.name for f in fields(TrainSettings) if "key" not in f.metadata and f.name != "extra")


def settings_to_yaml(s: TrainSettings) -> str:
    """YAML of the settings: an ``app`` section plus the config keys that differ from the defaults."""
    cfg = to_dict(s.config())
    defaults = flatten(to_dict(Config()))
    changed: dict[str, Any] = {}
    for key, value in flatten(cfg).items():
        if key in _SHOWN or value != defaults.get(key):
            section, name = key.split(".", 1)
            changed.setdefault(section, {})[name] = value
    app = {k: getattr(s, k) for k in _APP_KEYS}
    app["preprocess"] = s.preprocess == "yes"
    header = "# Training tab settings of the ldm app (the `app` section); the rest is an ldm training config.\n"
    return header + yaml.safe_dump({"app": app, **changed}, sort_keys=False)


def settings_from_yaml(text: str) -> TrainSettings:
    """Settings from :func:`settings_to_yaml` output or any training config YAML; ConfigError/UserError if bad."""
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"the settings file is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise UserError("the settings file must hold a mapping of sections (app, training, diffusion, ...)")
    app = d.pop("app", None) or {}
    if not isinstance(app, dict):
        raise UserError("the settings file's 'app' section must be a mapping")
    unknown = set(app) - set(_APP_KEYS)
    if unknown:
        raise UserError(f"unknown key(s) in the 'app' section: {', '.join(sorted(unknown))}; accepted: {_APP_KEYS}")
    flat = flatten(to_dict(from_dict(d)))  # validates every key and type, names the bad one
    given = flatten(d)
    s = TrainSettings()
    extra = []
    for key, value in flat.items():
        if key in _SHOWN:
            name, labels = _SHOWN[key]
            setattr(s, name, labels[value] if labels is not None else value)
        elif key in given:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            extra.append(f"{key}={text.removesuffix('...').strip()}")
    for k in _APP_KEYS:
        if k in app:
            setattr(s, k, app[k])
    s.preprocess = "yes" if app.get("preprocess", True) in (True, "yes") else "no"
    s.extra = "\n".join(extra)
    return TrainSettings.from_values(*s.values())


def save_settings(ws: Workspace, s: TrainSettings, path_text: str) -> Path:
    """Write the settings YAML to a file inside the workspace; returns its path."""
    path = ws.resolve(path_text, what="settings file", must_exist=False, kind="file")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"settings file {path_text!r}: use a .yaml or .yml name")
    atomic_write_text(path, settings_to_yaml(s))
    return path


def load_settings(ws: Workspace, path_text: str) -> TrainSettings:
    path = ws.resolve(path_text, what="settings file", kind="file")
    return settings_from_yaml(path.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# settings -> job


@dataclass
class JobPlan:
    run: Path  # runs/<name>
    latents: Path  # the latent cache train reads (an autoencoder run: its dataset)
    phases: list[Phase]
    log: Path
    info: dict[str, Any]  # stored in the job file (used by Resume)


def _ldm(*args: str) -> list[str]:
    return [sys.executable, "-m", "ldm", *args]


def gpu_count() -> int:
    """CUDA GPUs torch can use here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _launch(processes: int) -> list[str]:
    """The command prefix that runs ``ldm`` in ``processes`` processes, one per GPU (`accelerate launch`)."""
    if processes == 1:
        return _ldm()
    gpus = gpu_count()
    if not 1 <= processes <= max(gpus, 1):
        raise UserError(f"processes {processes}: one process per GPU, and this machine has {gpus} GPU(s)")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "-m", "ldm"]  # fmt: skip


def plan_job(ws: Workspace, s: TrainSettings) -> JobPlan:
    """The ``ldm`` commands that carry out the settings, every path checked to lie inside the workspace and written
    relative to it (the worker runs in the workspace, so a moved workspace still runs its job)."""
    if not RUN_NAME.match(s.run_name or ""):
        raise UserError(
            f"run name {s.run_name!r}: use 1-64 letters, digits, '.', '_' or '-' (it becomes the folder runs/NAME)"
        )
    overrides = s.overrides()
    if s.epochs == 0 and s.max_minutes == 0 and s.max_steps == 0:
        raise UserError("set at least one limit: epochs, max minutes or max steps (otherwise it never ends)")
    try:
        load_config(None, overrides)  # a bad extra setting is reported now, not after preprocessing
    except ConfigError as e:
        raise UserError(str(e)) from None
    rel = ws.rel
    run = ws.resolve(f"runs/{s.run_name}", what="run folder", must_exist=False)
    if RunFolder(run).is_started:
        raise UserError(
            f"run {rel(run)} already exists: choose another run name, or press Resume to continue it "
            "(a finished run then trains Max minutes / Max steps more)"
        )
    # data.* and autoencoder.* settings also shape the autoencoder and the cache
    stage_overrides = [o for o in s.extra_overrides() if o.startswith(("data.", "autoencoder."))]
    phases: list[Phase] = []
    if s.preprocess == "yes":
        data = ws.resolve(s.data_dir, what="data folder")
        if s.autoencoder in ("", TRAIN_HERE):
            vae = ws.resolve(f"runs/{s.run_name}-vae", what="autoencoder run folder", must_exist=False)
            if not RunFolder(vae).has_vae:  # reuse one trained by an earlier start
                argv = _ldm("train-vae", "--data", rel(data), "--out", rel(vae)) + stage_overrides
                if RunFolder(vae).latest_checkpoint() is not None:  # an earlier start was interrupted: continue it
                    argv += ["--resume", RunFolder.LATEST]
                phases.append(Phase("train-vae", argv, rel(vae)))
            vae_source = rel(vae)
        else:
            vae_source = _autoencoder_source(ws, s.autoencoder)
        latents = ws.resolve(s.latent_dir or f"data/latents/{s.run_name}", what="latent folder", must_exist=False)
        _check_cache_fits(ws, latents, data)
        argv = _ldm("prepare", "--data", rel(data), "--vae", vae_source, "--out", rel(latents)) + stage_overrides
        phases.append(Phase("prepare", argv, rel(latents)))
    else:
        latents = ws.resolve(s.latent_dir, what="latent folder")
        if not Manifest.exists(latents):
            raise UserError(
                f"latent folder {s.latent_dir!r} has no {MANIFEST}, so it is not a (complete) latent cache; "
                "choose preprocess = yes to build one from a data folder"
            )
    train = _launch(s.processes) + ["train", "--latents", rel(latents), "--out", rel(run)] + overrides
    phases.append(Phase("train", train, rel(run)))
    info = {"settings": asdict(s), "latents": rel(latents), "overrides": overrides}
    return JobPlan(run=run, latents=latents, phases=phases, log=run / "app-job.log", info=info)


SWEEPABLE = (  # the Sweep panel's choices of settings (any other config key may be typed)
    "training.learning_rate",
    "training.batch_size",
    "unet.preset",
    "diffusion.loss",
    "diffusion.label_dropout",
    "diffusion.prediction_type",
    "training.ema_power",
    "training.warmup_steps",
)
BUDGET_KEYS = ("training.max_minutes", "training.max_steps", "training.epochs")


def plan_sweep(
    ws: Workspace,
    s: TrainSettings,
    name: str,
    grid: list[tuple[str, str]],
    minutes: float,
    eval_samples: int = 0,
) -> JobPlan:
    """The Training tab's settings as every member's ``key=value`` settings, and the ``ldm sweep`` job
    over ``grid`` (up to two ``(config key, "v1, v2, ...")``), ``minutes`` per member; the data phases as
    :func:`plan_job` plans them. Every member's config is checked before the job starts."""
    from ldm.training.sweep import SweepSpec, check_members, parse_grid, plan_members

    if not RUN_NAME.match(name or ""):
        raise UserError(
            f"sweep name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it becomes runs/sweeps/NAME)"
        )
    items = [f"{key.strip()}={','.join(v.strip() for v in values.split(','))}" for key, values in grid if key]
    if not items:
        raise UserError("pick a setting to sweep and type its values, e.g. 0.0005, 0.001, 0.002")
    if not minutes > 0:
        raise UserError("minutes per run must be above 0")
    if eval_samples < 0:
        raise UserError("evaluation images must be 0 (no evaluation) or more")
    folder = ws.resolve(f"runs/sweeps/{name}", what="sweep folder", must_exist=False)
    if (folder / "sweep.json").exists():
        raise UserError(f"sweep runs/sweeps/{name} already exists: choose another name, or Continue sweep")
    overrides = [o for o in s.overrides() if not o.startswith(BUDGET_KEYS)]
    parsed = parse_grid(items)
    spec = SweepSpec(latents="", out=str(folder), config=None, grid=parsed, max_minutes=minutes, overrides=overrides)
    try:
        check_members(spec, plan_members(parsed))
    except ConfigError as e:
        raise UserError(str(e)) from None
    base = plan_job(ws, TrainSettings(**{**asdict(s), "run_name": f"sweep-{name}", "max_minutes": minutes}))
    argv = _ldm("sweep", "--latents", ws.rel(base.latents), "--out", ws.rel(folder), "--max-minutes", f"{minutes:g}")
    for item in items:
        argv += ["--grid", item]
    if eval_samples:
        argv += ["--eval-samples", str(int(eval_samples))]
    phases = [*base.phases[:-1], Phase("sweep", argv + overrides, ws.rel(folder))]
    info = {"settings": asdict(s), "latents": ws.rel(base.latents), "sweep": name}
    return JobPlan(run=folder, latents=base.latents, phases=phases, log=folder / "app-job.log", info=info)


def plan_continue_sweep(ws: Workspace, name: str) -> JobPlan:
    """The same ``ldm sweep`` command again for sweep ``name``: finished members are skipped, an interrupted one
    resumes (the plan and settings come from its ``sweep.json``)."""
    import json

    folder = ws.resolve(f"runs/sweeps/{name}", what="sweep folder")
    try:
        spec = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        raise UserError(
            f"runs/sweeps/{name} has no sweep.json: it is not a sweep (start one with Start sweep)"
        ) from None
    latents = ws.resolve(spec["latents"], what=f"latent folder of sweep {name}")
    argv = _ldm("sweep", "--latents", ws.rel(latents), "--out", ws.rel(folder))
    argv += ["--max-minutes", f"{spec['max_minutes']:g}", "--max-steps", str(spec["max_steps"])]
    for key, values in spec["grid"]:
        argv += ["--grid", f"{key}={','.join(values)}"]
    if spec.get("seeds"):
        argv += ["--seeds", ",".join(map(str, spec["seeds"]))]
    if spec.get("eval_samples"):
        argv += ["--eval-samples", str(spec["eval_samples"])]
    if spec.get("config"):
        argv += ["--config", spec["config"]]
    argv += list(spec.get("overrides") or [])
    phases = [Phase("sweep", argv, ws.rel(folder))]
    return JobPlan(run=folder, latents=latents, phases=phases, log=folder / "app-job.log", info={"sweep": name})


def _check_cache_fits(ws: Workspace, latents: Path, data: Path) -> None:
    """Refuse, in the app's words, a latent folder that already holds a cache of other images (preprocessing into
    it would fail after the autoencoder was trained)."""
    if not Manifest.exists(latents):
        return
    try:
        made_from = Manifest.load(latents).data_dir
    except UserError:
        return  # a broken manifest: prepare says what is wrong with it
    if made_from and Path(made_from).resolve() != data.resolve():
        raise UserError(
            f"latent folder {ws.rel(latents)} already holds a cache of other images ({ws.rel(made_from)}); "
            "choose another latent folder (empty = data/latents/RUN), or preprocess = no to train on that cache"
        )


def _autoencoder_source(ws: Workspace, text: str) -> str:
    """A folder inside the workspace (relative to it), or a hub id (``owner/name``, not a folder here)."""
    candidate = Path(text).expanduser()
    local = candidate if candidate.is_absolute() else ws.root / candidate
    if not local.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith("."):
        return text  # a hub id; loading it needs the hub, the prepare step reports if it is unreachable
    return ws.rel(ws.resolve(text, what="autoencoder folder"))


def plan_resume_run(
    ws: Workspace,
    run_text: str | Path | None,
    info: dict[str, Any] | None = None,
    more: dict[str, float] | None = None,
) -> JobPlan:
    """Resume any run of the workspace from its newest checkpoint, on the latent cache (or dataset) that
    checkpoint records, with the run's own config. Without ``more`` it finishes the budget it was started with;
    ``more`` (``{"max_minutes": M, "max_steps": N}``, zeros ignored) continues it for that much more training, also
    after it finished (a new segment with its own learning-rate schedule, see :mod:`ldm.training.loop`)."""
    run = ws.resolve(run_text, what="run folder")
    rel = ws.rel
    ckpt = RunFolder(run).latest_checkpoint()
    if ckpt is None:
        raise UserError(f"run {rel(run)} has no checkpoint yet, so it cannot be resumed; start it again instead")
    state = RunFolder.read_checkpoint_state(ckpt)
    budget = []
    for key, flag in (("max_minutes", "--max-minutes"), ("max_steps", "--max-steps")):
        value = (more or {}).get(key) or 0
        if value < 0:
            raise UserError(f"{key.replace('_', ' ')} must be 0 or more, got {value:g}")
        if value > 0:
            budget += [flag, f"{int(value)}" if key == "max_steps" else f"{value:g}"]
    if more is not None and not budget:
        raise UserError("set Max minutes or Max steps: how much longer to train it")
    if state.get("kind") == "autoencoder":  # an `ldm train-vae` run continues on the dataset it records
        data = ws.resolve(state.get("data_dir"), what=f"dataset of run {rel(run)}")
        argv = _ldm("train-vae", "--data", rel(data), "--out", rel(run), "--resume", RunFolder.LATEST) + budget
        phases = [Phase("train-vae", argv, rel(run))]
        return JobPlan(run=run, latents=data, phases=phases, log=run / "app-job.log", info={"data": rel(data)})
    info = dict(info or {})
    recorded = RunFolder.checkpoint_latents(ckpt) or info.get("latents")
    if not recorded:
        raise UserError(f"run {rel(run)}: its checkpoint {ckpt.name} does not say which latent cache it used")
    latents = ws.resolve(recorded, what=f"latent folder of run {rel(run)}")
    info["latents"] = rel(latents)
    processes = int((info.get("settings") or {}).get("processes") or 1)  # as the run was started
    argv = _launch(processes) + ["train", "--latents", rel(latents), "--out", rel(run), "--resume", RunFolder.LATEST]
    # the run's own config.yaml holds its settings; only the new budget is given
    return JobPlan(
        run=run, latents=latents, phases=[Phase("train", argv + budget, rel(run))], log=run / "app-job.log", info=info
    )
