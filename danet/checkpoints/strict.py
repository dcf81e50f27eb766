"""Building the network empty and filling it strictly: every key, every shape, or an error."""
from __future__ import annotations

import torch

from danet.errors import CheckpointError
from danet.models import Segmentor, DANetConfig
from danet.checkpoints.layouts import to_foreign
from danet.checkpoints.mapping import Mapped, listed


def _foreign(mapped: Mapped, key: str) -> str:
    return mapped.foreign_names.get(key) or to_foreign(mapped.layout, mapped.stem_style, key)


def load_strict(model: Segmentor, mapped: Mapped) -> list[str]:
    """Copy ``mapped`` into ``model``; every missing, unexpected or misshapen key is an error.

    The only tolerated gaps are a layout's ``optional_head`` modules (zero-filled, with a
    warning). Returns the warnings.
    """
    layout, warnings = mapped.layout, []
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = dict(mapped.state)
    for key, tensor in list(state.items()):
        if key in own and own[key].shape == (1,) and tensor.dim() == 0:   # mmseg Scale: 0-d gamma
            state[key] = tensor.reshape(1)
    absent = [m for m in layout.optional_head
              if not any(k.startswith(f"head.{m}.") for k in state)]
    if absent and len(absent) == len(layout.optional_head):
        for key in own:
            if key.startswith(tuple(f"head.{m}." for m in absent)):
                state[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)
        warnings.append("the checkpoint has no PAM-only and CAM-only classifiers (trained without aux): those two "
                        "outputs are set to zero; the fused output and the attention maps are unaffected")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {listed(_foreign(mapped, k) for k in missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {listed(_foreign(mapped, k) for k in unexpected)}")
        if wrong:
            parts.append(f"wrong shape {len(wrong)}: " + listed(
                f"{_foreign(mapped, k)} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in wrong))
        raise CheckpointError(f"{layout.name} layout detected, but the weights do not fit the network inferred "
                              f"from them ({model.config.backbone}, {model.config.num_classes} classes): "
                              + "; ".join(parts))
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    counters = {k: torch.zeros((), dtype=v.dtype) for k, v in model.state_dict().items()
                if k.endswith("num_batches_tracked")}
    # ``assign`` adopts the file's tensors: the model may be built on the meta device (no init)
    model.load_state_dict({**counters, **state}, strict=True, assign=True)
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        warnings.append(f"{len(bad)} weight tensors contain NaN or Inf values ({listed(_foreign(mapped, k) for k in bad)}); "
                        "the model's outputs will be meaningless")
    return warnings


def _finite(tensor: torch.Tensor) -> bool:
    """All values finite? A sum is one cheap pass; only a non-finite sum is checked in full."""
    total = tensor.sum(dtype=torch.float32) if tensor.dtype != torch.float64 else tensor.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


def build_empty(config: DANetConfig) -> Segmentor:
    """The network without initialising weights (they all come from the file)."""
    with torch.device("meta"):
        return Segmentor(config)
