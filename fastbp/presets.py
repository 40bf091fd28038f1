"""Named sets of training defaults: the CLI's `--preset` and `Trainer.from_preset` read them here.

"recipe" (the CLI's default) was chosen by the ablation in docs/performance.md; "plain" is fastbp's training
before presets. Settings are named as the CLI's options are (early stopping and its patience are a fit-time
callback in Python, fastbp.EarlyStopping; neither preset stops early).
"""
from .core.errors import InputError

PRESETS = {
    "plain": {"activation": "relu", "optimizer": "adam", "lr": None, "epochs": 10, "min_steps": 0,
              "early_stopping": False, "patience": 10, "numeric": "standard", "label_smoothing": 0.0,
              "lr_schedule": "constant", "warmup_epochs": 0, "ensemble": 1, "ensemble_adapters": "first_layer"},
    "recipe": {"activation": "gelu", "optimizer": "adamw", "lr": 3e-3, "epochs": 30, "min_steps": 720,
               "early_stopping": False, "patience": 6, "numeric": "auto", "label_smoothing": 0.1,
               "lr_schedule": "cosine", "warmup_epochs": 2, "ensemble": 4,
               "ensemble_adapters": "first_layer"},
}
HIDDEN = (256, 256)  # both presets' hidden widths (the CLI's --hidden default)


def lr_schedule(name, warmup_epochs):
    """A Trainer's lr_schedule for a schedule's name and warm-up epochs (cosine's warm-up is the only one)."""
    return (name, {"warmup_epochs": warmup_epochs}) if name == "cosine" else name


def label_smoothing(name, loss):
    """A preset's label smoothing for a model trained with `loss`: cross-entropy's (no other loss has one)."""
    return PRESETS[name]["label_smoothing"] if loss == "cross_entropy" else 0.0


def trainer_settings(name, loss="cross_entropy"):
    """A preset's settings as Trainer arguments, for a model trained with `loss`."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if preset["early_stopping"]:  # a callback, not a Trainer setting: no preset has it yet
        raise InputError(f"preset {name!r} stops early: pass fastbp.EarlyStopping to fit")
    return {"hidden": HIDDEN, "activation": preset["activation"], "optimizer": preset["optimizer"], "lr": preset["lr"],
            "epochs": preset["epochs"], "min_steps": preset["min_steps"],
            "numeric": preset["numeric"], "label_smoothing": label_smoothing(name, loss),
            "lr_schedule": lr_schedule(preset["lr_schedule"], preset["warmup_epochs"]), "ensemble": preset["ensemble"],
            "ensemble_adapters": preset["ensemble_adapters"]}
