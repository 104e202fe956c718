"""What a dictionary type declares about itself, on its own class, so that no other room asks "is
the arch called X?":

  Options       its own training options (a dataclass; `TypeOptions` below). Their fields become
                `TrainConfig` fields, so `--groups`, `--jumprelu-init-fire` ... are flags and flat
                `--config` keys as before, and their checks live here, on the type.
  capabilities  what it can do (`Capabilities`): sparsity by k or by a penalty, the losses it trains
                with, transcoder sites, torchrun modes, a latent cache / steering form.
  foreign       how other libraries name it (`ForeignNames`): SAELens' architecture and tensor names,
                sparsify, or neither (export refused).

Each registered class declares all three in its own class body (registry.py checks this: a subclass
such as Matryoshka of BatchTopK must not inherit its parent's answers by accident).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import UserError
from ..option_checks import flag

LOSSES = ("local", "e2e", "e2e+ds", "kl+mse")  # every objective (train/objectives.py, train/finetune.py)
LOCAL_ONLY = ("local",)
TORCHRUN_MODES = ("data", "modules", "latents")  # --distributed


def start_option(default, help: str):
    """A type option that sets how a NEW dictionary starts (refused with --init-from, which copies one)."""
    return field(default=default, metadata={"help": help, "start": True})


@dataclass
class TypeOptions:
    """A type's own training options. Every field is a TrainConfig field (flag --name, flat config key),
    at its default unless the user set it. The type whose options these are checks them (`check`); a
    value set for another --arch is refused by the training config's checks (train/config_checks.py)."""

    def check(self, run) -> None:
        """Ranges and combinations; `run` is the whole TrainConfig (latents, hookpoints, init_from ...)."""

    def sae_fields(self, fresh: bool) -> dict:
        """SaeConfig fields these options set: for a new dictionary (`fresh`), or for one copied by --init-from."""
        return {}

    @staticmethod
    def recorded(sae_cfg) -> dict:
        """Option values a saved dictionary fixes (what --init-from adopts, refusing a user's other value)."""
        return {}


@dataclass
class NoOptions(TypeOptions):
    """A type with no options of its own."""


@dataclass(frozen=True)
class Capabilities:
    uses_k: bool = False  # sparsity set by k (one SAE per --k), not by --sparsity-coeff
    losses: tuple[str, ...] = LOSSES  # objectives it trains with (LOCAL_ONLY: its own terms need the target)
    transcoder: bool = True  # accepts transcoder sites 'A->B' (and --skip)
    multi_site: bool = False  # one dictionary over several sites joined (crosscoder: sources.py)
    latent_cache: bool = True  # one site to record examples at and to steer (features/)
    torchrun: tuple[str, ...] = ("data", "modules")  # --distributed modes it trains under; "data" only when
    # exact (the one-process result), "latents" when shardable
    one_process_why: str = ""  # why torchrun is refused altogether (shown when `torchrun` is empty)


@dataclass(frozen=True)
class ForeignNames:
    saelens: str  # cfg.json `architecture`: SAELens' name for the saved form
    # (a saelab-only type writes its own name there)
    saelens_reader: bool = False  # reading a SAELens folder of that name gives this type
    saelens_tensors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # ours -> SAELens
    sparsify: bool = False  # sparsify stores it (TopK coders): export and import
    saelab_only: str | None = None  # neither library has it: what it is, and export is refused


def check_declared(name: str, cls) -> None:
    """A registered type declares Options, capabilities and foreign in its own class body, of these types."""
    own = vars(cls)
    for attr, kind in (("Options", type), ("capabilities", Capabilities), ("foreign", ForeignNames)):
        if attr not in own:
            raise TypeError(f"dictionary type {name!r} ({cls.__name__}) must declare `{attr}` in its own class body")
        if not isinstance(own[attr], kind):
            raise TypeError(f"{cls.__name__}.{attr} must be a {kind.__name__}")
    if not (dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, TypeOptions)):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass subclassing TypeOptions")
    caps = cls.capabilities
    if not set(caps.losses) <= set(LOSSES) or "local" not in caps.losses:
        raise TypeError(f"{cls.__name__}.capabilities.losses {caps.losses}: a subset of {LOSSES} with 'local'")
    if not set(caps.torchrun) <= set(TORCHRUN_MODES):
        raise TypeError(f"{cls.__name__}.capabilities.torchrun {caps.torchrun}: a subset of {TORCHRUN_MODES}")
    if not caps.torchrun and not caps.one_process_why:
        raise TypeError(f"{cls.__name__}: a type refused under torchrun says why (capabilities.one_process_why)")


def check_fraction(name: str, value: float | None) -> None:
    """A `start_option` fraction of tokens: a new dictionary's initial firing rate."""
    if value is None:
        return
    if not 0 < value < 1:
        raise UserError(f"{flag(name)} is a fraction of tokens, between 0 and 1 (exclusive); got {value}")
