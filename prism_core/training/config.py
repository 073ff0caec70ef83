"""Stage 1 settings as one dataclass whose field help doubles as the node tooltips."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _validate(owner: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{owner}: {message}.")


@dataclass(frozen=True)
class TokenConfig:
    """Every knob of Algorithm 1 (paper Sec. 3.2-3.3). Defaults are the paper's SD values (one target vector, eight
    per residual token, beta 0.05, |J| = 3, AdamW lr 4e-4, 200 steps of 4 accumulated micro-steps); weight decay is
    the reference implementation's. The README's "Defaults that differ from the reference implementation" lists
    the rest, each with its source."""

    target_length: int = _setting(1, "Number of embedding vectors in the target token (the shared concept). The paper's ablation finds 1 best.")
    residual_length: int = _setting(8, "Vectors per residual token (one token per image, for what the image does NOT share). 0 = no residual tokens (plain textual inversion).")
    beta: float = _setting(0.05, "Weight of the exclusion loss (Eq. 4). 0 disables it; 0.05 is the paper's SD value.")
    exclusion_set_size: int = _setting(3, "|J|: other images each residual token is checked against per micro-step (capped at N-1).")
    learning_rate: float = _setting(4e-4, "AdamW learning rate for the token vectors (paper: 4e-4).")
    steps: int = _setting(200, "Optimizer updates. One step = gradient_accumulation micro-steps, each on one image.")
    gradient_accumulation: int = _setting(4, "Micro-steps (one image each) averaged into one optimizer update.")
    caption_init: bool = _setting(True, "Start each residual token from the mean text-encoder embedding of its image's caption (paper Sec. 3.3). Off = random start (Table 2 rows 2-3).")
    seed: int = _setting(0, "Seed for initialisation, image order, timesteps and noise. Same seed, same tokens.")
    weight_decay: float = _setting(0.01, "AdamW weight decay (the reference implementation's 1e-2).")
    max_grad_norm: float = _setting(1.0, "Gradient-norm clip on the token vectors (the reference implementation's 1.0); 0 disables.")
    frozen_encoders: tuple[str, ...] | None = _setting(None, "Text encoders whose token rows keep their initial values (not trained). None: the family's default, clip_l on FLUX.1 (the reference FLUX trainer learns T5 rows only; CLIP-L feeds only the pooled vector), none on SD.")

    def __post_init__(self) -> None:
        if self.frozen_encoders is not None:
            object.__setattr__(self, "frozen_encoders", tuple(self.frozen_encoders))
        checks = [
            (self.target_length >= 1, "target_length must be at least 1"),
            (self.residual_length >= 0, "residual_length must be 0 or more"),
            (self.beta >= 0, "beta must be 0 or more"),
            (self.exclusion_set_size >= 1, "exclusion_set_size must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.gradient_accumulation >= 1, "gradient_accumulation must be at least 1"),
            (self.max_grad_norm >= 0, "max_grad_norm must be 0 or more"),
        ]
        _validate("TokenConfig", checks)
        if self.beta > 0 and self.residual_length == 0:
            raise ValueError(
                "TokenConfig: beta > 0 needs residual tokens; set residual_length >= 1 or beta = 0."
            )

    def anchors_for(self, n_images: int) -> int:
        """|J| actually used with `n_images` images: the setting, or N-1 when fewer are available."""
        return min(self.exclusion_set_size, n_images - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoraConfig:
    """Every knob of Algorithm 2 (paper Sec. 3.4). Defaults are the paper's SD values (lr 4e-4, 4 accumulated
    micro-steps, about 120 steps, measured every 40 up to 200) and the reference's rank and alpha 4; see the README's "Defaults that differ from the reference
    implementation" for the rest."""

    rank: int = _setting(4, "LoRA rank (the reference implementation's 4). Higher learns more detail and more of the training images.")
    alpha: float = _setting(4.0, "LoRA alpha; the update is scaled by alpha/rank (reference: 4, i.e. scale 1).")
    learning_rate: float = _setting(4e-4, "AdamW learning rate for the LoRA weights (paper: 4e-4).")
    steps: int = _setting(120, "Optimizer updates. One step = gradient_accumulation micro-steps, each on one image. The paper found ~120 best (measured every 40 up to 200).")
    gradient_accumulation: int = _setting(4, "Micro-steps (one image each) averaged into one optimizer update.")
    seed: int = _setting(0, "Seed for the LoRA initialisation, image order, timesteps and noise. Same seed, same LoRA.")
    weight_decay: float = _setting(0.01, "AdamW weight decay (the reference implementation's 1e-2).")
    max_grad_norm: float = _setting(1.0, "Gradient-norm clip on the LoRA weights (the reference implementation's 1.0); 0 disables.")
    checkpoint_every: int = _setting(0, "Also save the LoRA every N steps into the loras folder (the paper compared every 40). 0 = off.")

    def __post_init__(self) -> None:
        checks = [
            (self.rank >= 1, "rank must be at least 1"),
            (self.alpha > 0, "alpha must be positive"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.gradient_accumulation >= 1, "gradient_accumulation must be at least 1"),
            (self.max_grad_norm >= 0, "max_grad_norm must be 0 or more"),
            (self.checkpoint_every >= 0, "checkpoint_every must be 0 or more"),
        ]
        _validate("LoraConfig", checks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def help_text(config_class: type, name: str) -> str:
    """The help string of one dataclass field (used as a node tooltip)."""
    return config_class.__dataclass_fields__[name].metadata["help"]


# The reference implementation's FLUX.1 Stage 1 values (its train_flux_stage1.py): what the
# "auto" preset runs on a FLUX.1 model in place of the SD values the widgets default to.
FLUX_TOKEN_DEFAULTS: dict[str, Any] = {"residual_length": 1, "beta": 0.5, "learning_rate": 1e-4, "weight_decay": 1e-4,
                                       "gradient_accumulation": 1}
PRESETS = ("auto", "widgets")


# The reference FLUX.1 Stage 2 values (rank and alpha 4 as for SD; its accumulation is 1, as in its Stage 1). Its
# checkpoint every 100 steps is not among them: checkpoint_every 0 means "off", a choice the preset must not undo
# (the FLUX template sets 100).
FLUX_LORA_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-4, "weight_decay": 1e-4, "steps": 500, "gradient_accumulation": 1}


def family_preset(config: Any, family: str, preset: str) -> Any:
    """The TokenConfig / LoraConfig that runs: preset "widgets" keeps `config`; "auto" on a FLUX.1 model
    ("flux") puts the FLUX_TOKEN_DEFAULTS / FLUX_LORA_DEFAULTS values into every one of those fields that is
    still at its SD default (the node's widget default), so a node added by hand runs the reference FLUX
    values and a value the user changed is kept. Other families' reference values are the widget defaults.
    Raises ValueError for another preset name."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    if preset == "auto" and family == "flux":
        defaults = FLUX_TOKEN_DEFAULTS if isinstance(config, TokenConfig) else FLUX_LORA_DEFAULTS
        fields = type(config).__dataclass_fields__
        return dataclasses.replace(config, **{name: value for name, value in defaults.items()
                                              if getattr(config, name) == fields[name].default})
    return config


# The four rows of the paper's Table 2, as overrides of the defaults.
TABLE2_CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "target_only": {"residual_length": 0, "beta": 0.0, "caption_init": False},
    "residual": {"beta": 0.0, "caption_init": False},
    "residual_exclusion": {"caption_init": False},
    "full": {},
}
