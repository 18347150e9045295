"""What a timm feature body needs, beyond :func:`~sweeper.tasks.backbones.create_timm_body`, to sit
under a detector or DBNet: the input size it is built for, and NCHW feature maps.

Why: timm builds its transformer backbones (Swin, ViT, ...) for one input size and refuses any
other (``Input height (512) doesn't match model (224)``), while the tasks train at
``train.resolution``, detection changes it per epoch (``train.resolution_schedule``) and evaluates
at ``eval.resolution``; and Swin's feature maps are channels-last (NHWC), which every convolution
after them (FPN, DB decoder) reads as NCHW (``expected input[2, 7, 7, 768] to have 768 channels``).

* :func:`build_body`: a model whose timm pretrained config says ``fixed_input_size`` is built with
  ``dynamic_img_size=True`` (any input size, on every forward). Swin is also built for
  ``img_size = max(resolution, its pretrained size)``: Swin fixes its shifted windows at build from
  that size (a stage smaller than its 7 x 7 window would neither shift nor keep its window, and a
  smaller window changes the relative-position tables' shapes), so every stage keeps the
  checkpoint's window shape and shifts as Swin trains at that resolution. Other models keep their
  pretrained size (a ViT's position embedding keeps the checkpoint's shape; timm interpolates it
  per input). A fixed-size model that timm cannot make dynamic is built at its own size only:
  another ``train.resolution`` is a ValueError at build, naming it.
* :func:`nchw`: a body's outputs as NCHW, by its ``output_fmt`` (timm's feature wrappers record
  the wrapped model's format; a body without one is NCHW).

Usage::

    body = build_body({"backbone": "swin_tiny_patch4_window7_224"}, resolution=512, out_indices=3)
    feats = nchw(body, body(images))        # [(B, 192, 64, 64), (B, 384, 32, 32), (B, 768, 16, 16)]
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from sweeper.tasks.backbones import create_timm_body

#: timm modules whose models fix their windows from ``img_size`` (see the module docstring)
WINDOWED_MODULES = ("swin_transformer",)


def size_kwargs(backbone: str, resolution: int | None) -> dict[str, Any]:
    """The ``timm.create_model`` keywords that make ``backbone`` take ``resolution`` px inputs (and
    any other size later); none for a model that takes any size already (CNNs)."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not cfg.fixed_input_size:
        return {}
    kwargs: dict[str, Any] = {"dynamic_img_size": True}
    if resolution and timm.models.is_model_in_modules(timm.models.get_arch_name(backbone), WINDOWED_MODULES):
        kwargs["img_size"] = max(int(resolution), int(cfg.input_size[-1]))
    return kwargs


def build_body(model_cfg: Mapping[str, Any], resolution: int | None = None, **timm_kwargs: Any) -> nn.Module:
    """``create_timm_body`` for inputs of ``resolution`` px (None: the model's own size), see the
    module docstring."""
    name = str(model_cfg.get("backbone", "resnet18"))
    sized = size_kwargs(name, resolution)
    try:
        return create_timm_body(model_cfg, **sized, **timm_kwargs)
    except (TypeError, ValueError) as exc:  # the constructor's TypeError, or create_timm_body's message of it
        if "unexpected keyword argument 'dynamic_img_size'" not in str(exc):
            raise
    native = int(timm.models.get_pretrained_cfg(name).input_size[-1])
    if resolution and int(resolution) != native:
        raise ValueError(f"train.resolution: {resolution} px, but timm model {name!r} takes only {native} x "
                         f"{native} px inputs (no dynamic size in timm {timm.__version__}); train it at {native} "
                         "(and without resolution_schedule / another eval.resolution)")
    return create_timm_body(model_cfg, **timm_kwargs)


def nchw(body: nn.Module, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The body's feature maps as NCHW (Swin's are NHWC)."""
    if getattr(body, "output_fmt", "NCHW") == "NHWC":  # timm's Format is a str enum
        return [f.permute(0, 3, 1, 2) for f in feats]
    return list(feats)
