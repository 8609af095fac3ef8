"""Registries: the names a run or a study may choose, each mapped to what implements it.

One registry per choice a study can vary: `LOSSES` (functions), `HEADS` (classes), `ENCODERS`
(SAM sizes), `ADAPTERS` (fine-tuning methods). An implementation registers itself where it is
defined, with one decorator (or one assignment, for data)::

    >>> import torch.nn.functional as F
    >>> from tuner.core.registry import LOSSES
    >>> @LOSSES.register("plain_ce")
    ... def plain_ce(logits, target):
    ...     return F.cross_entropy(logits, target, ignore_index=255)
    >>> "plain_ce" in LOSSES and "ce" in LOSSES
    True
    >>> del LOSSES["plain_ce"]

The vocabulary (`TrainConfig`), the search spaces and the CLI only ask a registry for names; a
registry imports its *provider*, the module whose definitions fill it, the first time it is
asked. So `tuner.core.config` never imports an implementation (no torch model code to load a
config), and a newly registered name is valid everywhere: `tuner train --help`, `--loss`, a
space's `choices`, and `choices: all`.

A registry also *declares* the names its provider registers, so that `tuner train --help` can
list them without importing the provider (and torch, seconds on a small machine):
`known_names()`. Loading the provider checks the declaration, so a name registered there but
not declared here (or the reverse) fails at once, naming both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from tuner.core.errors import ConfigError

T = TypeVar("T")


class Registry(MutableMapping, Generic[T]):
    """name -> implementation, filled by `register` (or item assignment) in the provider."""

    def __init__(
        self, kind: str, provider: str | None = None, declared: tuple[str, ...] = ()
    ) -> None:
        self.kind, self.provider, self.declared = kind, provider, declared
        self._items: dict[str, T] = {}
        self._loaded = provider is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@LOSSES.register("name")` over a function or a class."""

        def add(item: T) -> T:
            self[name] = item
            return item

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # before the import: the provider registers into us
            before = set(self._items)
            importlib.import_module(self.provider)
            self._check_declared(set(self._items) - before)
            # In the declared order (the provider's import order is an accident), then the rest.
            order = {name: index for index, name in enumerate(self.declared)}
            ranked = sorted(self._items, key=lambda name: order.get(name, len(order)))
            self._items = {name: self._items[name] for name in ranked}

    def _check_declared(self, registered: set[str]) -> None:
        """The provider registered exactly the declared names (those registered before it
        loaded, by a plugin or a test, are not its own)."""
        missing = [n for n in self.declared if n not in self._items]
        undeclared = sorted(registered - set(self.declared))
        if missing or undeclared:
            raise RuntimeError(
                f"{self.provider}: {self.kind} registry declares {list(self.declared)} in "
                f"tuner/core/registry.py but registers {sorted(registered) or 'none of them'}"
                f" (missing {missing}, undeclared {undeclared}): keep the two in step"
            )

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def known_names(self) -> list[str]:
        """The names without importing the provider: the declared ones and those already
        registered (equal to `names()`, as the load checks)."""
        if self._loaded:
            return list(self._items)
        return [*self.declared, *(n for n in self._items if n not in self.declared)]

    def get_or_fail(self, name: str, source: str = "config") -> T:
        """The implementation of `name`, or a ConfigError listing the choices."""
        self._load()
        if name not in self._items:
            raise ConfigError(
                f"{source}: unknown {self.kind} {name!r}; expected one of {', '.join(self._items)}"
            )
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._items[name]

    def __setitem__(self, name: str, item: T) -> None:
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._items)

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items) or 'not loaded'})"


LOSSES: Registry = Registry(
    "loss",
    "tuner.core.losses",
    ("ce", "ohem_ce", "focal", "dice", "ce_dice", "lovasz", "boundary_ce"),
)
HEADS: Registry = Registry("head", "tuner.core.model.heads", ("linear", "conv", "mask_decoder"))
ENCODERS: Registry = Registry(
    "model",
    "tuner.core.model.backbone",
    ("sam_tiny", "sam_tiny_scratch", "vit_b", "vit_l", "vit_h"),
)
ADAPTERS: Registry = Registry(
    "adapter", "tuner.core.model.adapters", ("none", "lora", "convlora", "adaptformer")
)

# The TrainConfig fields whose values are registry names.
FIELD_REGISTRIES: dict[str, Registry] = {
    "loss": LOSSES,
    "head": HEADS,
    "model": ENCODERS,
    "adapter": ADAPTERS,
}
