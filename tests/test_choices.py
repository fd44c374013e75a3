"""One table per choice list (ldm/choices.py): config, library, CLI and app accept exactly its names."""

from __future__ import annotations

import re

import pytest
import torch

from ldm import choices
from ldm.config import ConfigError, TrainingConfig, load_config
from ldm.errors import UserError

# config key -> the table that lists its accepted values
CONFIG_CHOICES = {
    "autoencoder.down_factor": choices.DOWN_FACTORS,
    "autoencoder.recon_loss": choices.RECON_LOSSES,
    "autoencoder.mixed_precision": choices.MIXED_PRECISION,
    "autoencoder.scaling_factor": choices.SCALING_FACTOR_MODES,
    "unet.preset": choices.UNET_PRESETS,
    "diffusion.beta_schedule": choices.BETA_SCHEDULES,
    "diffusion.prediction_type": choices.PREDICTION_TYPES,
    "diffusion.loss": choices.LOSSES,
    "training.optimizer": choices.OPTIMIZERS,
    "training.lr_schedule": choices.LR_SCHEDULES,
    "training.mixed_precision": choices.MIXED_PRECISION,
    "training.sample_scheduler": choices.SCHEDULER_NAMES,
    "sampling.scheduler": choices.SCHEDULER_NAMES,
}


@pytest.mark.parametrize("key", list(CONFIG_CHOICES))
def test_config_accepts_exactly_the_table(key):
    section, name = key.split(".")
    table = CONFIG_CHOICES[key]
    for value in table:
        assert getattr(getattr(load_config(None, [f"{key}={value}"]), section), name) == value
    listed = re.escape(", ".join(repr(v) for v in table))
    with pytest.raises(ConfigError, match=f"config key '{key}'.*accepted: .*one of {listed}"):
        load_config(None, [f"{key}=not-a-choice"])


def test_labelled_tables_name_every_choice_once():
    for labels, names in ((choices.LOSS_LABELS, choices.LOSSES), (choices.OPTIMIZER_LABELS, choices.OPTIMIZERS)):
        assert tuple(labels) == names
        assert len(set(labels.values())) == len(labels)
    assert list(choices.SCHEDULERS) == list(choices.SCHEDULER_NAMES)
    assert choices.SCHEDULER_NAMES[0] == load_config().sampling.scheduler  # the app lists the default first


def test_every_scheduler_names_a_diffusers_class():
    import diffusers

    for name, (cls_name, overrides) in choices.SCHEDULERS.items():
        cls = getattr(diffusers, cls_name)
        assert issubclass(cls, diffusers.SchedulerMixin), name
        assert isinstance(overrides, dict), name


def test_the_library_implements_every_loss_prediction_type_and_beta_schedule():
    from ldm.config import DiffusionConfig
    from ldm.diffusion.objective import elementwise_loss, make_train_scheduler, min_snr_weights

    pred, target = torch.zeros(2, 3), torch.ones(2, 3)
    for loss in choices.LOSSES:
        assert elementwise_loss(pred, target, loss).shape == (2, 3)
    for prediction_type in choices.PREDICTION_TYPES:
        assert min_snr_weights(torch.tensor([0.0, 1.0, 50.0]), 5.0, prediction_type).isfinite().all()
    for beta_schedule in choices.BETA_SCHEDULES:
        for prediction_type in choices.PREDICTION_TYPES:
            cfg = DiffusionConfig(beta_schedule=beta_schedule, prediction_type=prediction_type)
            assert make_train_scheduler(cfg).config.beta_schedule == beta_schedule


def test_the_trainer_builds_every_optimizer_and_precision():
    from ldm.device import resolve_mixed_precision
    from ldm.training.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    built = {type(make_optimizer(params, TrainingConfig(optimizer=name))).__name__ for name in choices.OPTIMIZERS}
    assert built == {"AdamW", "Adam", "SGD"}
    for setting in choices.MIXED_PRECISION:
        if setting == "fp16":
            with pytest.raises(UserError, match="needs CUDA"):
                resolve_mixed_precision(setting, "cpu")
        else:
            assert resolve_mixed_precision(setting, "cpu") in ("no", "bf16")


def test_cli_help_lists_the_schedulers(capsys):
    from ldm.cli import build_parser

    for command in ("sample", "export"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert ", ".join(choices.SCHEDULER_NAMES) in " ".join(capsys.readouterr().out.split())


def test_app_dropdowns_offer_the_tables(tmp_path):
    from ldm.app.blocks import build_app

    demo = build_app(tmp_path)
    offered = {c.label: [value for _, value in c.choices] for c in demo.blocks.values() if hasattr(c, "choices")}
    assert offered["Sampler"] == list(choices.SCHEDULER_NAMES)
    assert offered["Model preset"] == list(choices.UNET_PRESETS)
    assert offered["Loss"] == list(choices.LOSS_LABELS.values())
    assert offered["Optimizer"] == list(choices.OPTIMIZER_LABELS.values())
