"""What every adapter module shares: it wraps a frozen pretrained module (`base`, kept under
that name so a delta checkpoint recognises the base's tensors), adds parameters of its own,
and either folds into a plain module (LoRA) or stays a module of its own (ConvLoRA,
AdaptFormer)."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from tuner.core.errors import ConfigError


class Adapted(nn.Module):
    """A frozen `base` module plus trainable parameters added beside it."""

    # True where the added path is linear in the input, so it folds into the base's weight.
    mergeable: ClassVar[bool] = False

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)

    def added_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    def merged(self) -> nn.Module:
        """One plain module computing the same function (only where `mergeable`)."""
        raise TypeError(f"{type(self).__name__} cannot be folded into its base module")


def adapted_blocks(model, config) -> list[nn.Module]:
    """The blocks an adapter goes on: the frozen ones (see the package docstring)."""
    if config.freeze_depth < 1:
        raise ConfigError(
            f"adapter={config.adapter}: needs freeze_depth >= 1; adapters sit on the frozen "
            "blocks, and with nothing frozen every weight already trains"
        )
    return list(model.encoder.blocks[: config.freeze_depth])


def check_rank(model, config) -> None:
    """LoRA and ConvLoRA: a rank from 1 to the encoder's width."""
    width = model.encoder.blocks[0].attn.proj.in_features
    if not 1 <= config.lora_rank <= width:
        raise ConfigError(
            f"lora_rank={config.lora_rank}: expected 1 to {width} (the width of {config.model})"
        )


def _replace_children(model: nn.Module, replacement) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Adapted):
                new = replacement(child)
                if new is not child:
                    setattr(module, name, new)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every mergeable adapter (LoRA) into its module, in place, so the model has no extra
    layers left (for export, INT8 and plain inference). ConvLoRA and AdaptFormer stay: they
    are not linear in their input."""
    return _replace_children(model, lambda a: a.merged() if a.mergeable else a)


def strip_adapters(model: nn.Module) -> nn.Module:
    """Every adapter replaced by its frozen base, in place: the architecture a merged LoRA
    model has. `tuner quantize` times it to show what an unmergeable adapter costs."""
    return _replace_children(model, lambda a: a.base)


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, Adapted) for m in model.modules())


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters adapters added: new, so they learn at the head's rate."""
    return [p for m in model.modules() if isinstance(m, Adapted) for p in m.added_parameters()]
