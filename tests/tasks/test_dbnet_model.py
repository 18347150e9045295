"""DBNet's `model.weights`: a matching local timm state dict fills the backbone; a damaged file or
another model's weights is refused with a ValueError naming `model.weights` and the file (timm
loads non-strictly, so it would otherwise leave the backbone random without a word)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from sweeper.tasks.dbnet.model import build_dbnet

CFG = {"backbone": "resnet18", "decoder": "unet", "channels": 16, "k": 50, "pretrained": True}


def _save(path: Path, state: dict[str, Any]) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("features_only, suffix", [(True, ".pth"), (False, ".safetensors")],
                         ids=["features_pth", "full_model_safetensors"])
def test_matching_weights_fill_the_backbone(features_only: bool, suffix: str, tmp_path: Path) -> None:
    state = timm.create_model("resnet18", features_only=features_only).state_dict()
    path = _save(tmp_path / f"resnet18{suffix}", state)
    model = build_dbnet({**CFG, "weights": str(path)})
    loaded = model.backbone.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"])
    torch.testing.assert_close(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    out = model(torch.zeros(1, 3, 64, 64))
    assert out["prob"].shape == (1, 1, 64, 64)


def _mobilenet() -> dict[str, Any]:
    return timm.create_model("mobilenetv3_small_050", features_only=True).state_dict()


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    """mobilenet shares a few key names with resnet18 (bn1.*), in other shapes: timm itself fails."""
    path = _save(tmp_path / "mobilenet.pth", _mobilenet())
    with pytest.raises(ValueError) as info:
        build_dbnet({**CFG, "weights": str(path)})
    msg = str(info.value)
    assert msg.startswith(f"model.weights: cannot load {path} into timm model 'resnet18'"), msg
    assert "size mismatch for bn1.weight" in msg and len(msg) < 1500, msg


@pytest.mark.parametrize("kind", ["prefixed_mobilenet", "whole_dbnet"])
def test_weights_that_timm_would_skip_silently_are_refused(kind: str, tmp_path: Path) -> None:
    """No key in common (a wrapper's `model.` prefix, a whole DBNet checkpoint): timm loads nothing
    and says only a warning, leaving the backbone random; the check by value refuses it."""
    if kind == "prefixed_mobilenet":
        state = {f"model.{k}": v for k, v in _mobilenet().items()}
        first = "model.conv_stem.weight"
    else:
        state = build_dbnet({"backbone": "resnet18", "channels": 16}).state_dict()
        first = "backbone.conv1.weight"
    path = _save(tmp_path / f"{kind}.pth", state)
    with pytest.raises(ValueError) as info:
        build_dbnet({**CFG, "weights": str(path)})
    msg = str(info.value)
    assert msg.startswith(f"model.weights: {path} does not fit timm model 'resnet18': 20 of its 20 weight "
                          "tensors are not in the file"), msg
    assert "missing e.g. conv1.weight" in msg and f"unexpected keys in the file e.g. {first}" in msg, msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weights_are_refused(suffix: str, tmp_path: Path) -> None:
    path = _save(tmp_path / f"resnet18{suffix}", timm.create_model("resnet18", features_only=True).state_dict())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        build_dbnet({**CFG, "weights": str(path)})
    assert str(info.value).startswith(f"model.weights: cannot read {path} (truncated or not a checkpoint?)"), info.value


def test_missing_weights_file_and_pretrained_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^model\.weights: backbone weights file not found: .*nowhere\.pth$"):
        build_dbnet({**CFG, "weights": str(tmp_path / "nowhere.pth")})
    with pytest.raises(ValueError, match=r"^model\.pretrained: True needs model\.weights"):
        build_dbnet({**CFG, "weights": None})


def _widths(model: torch.nn.Module) -> dict[str, int]:
    """Output channels of the decoder's laterals / FPN levels and of its last layer, and the head's input."""
    dec = model.decoder
    inner = dec.lateral[0][0].out_channels if hasattr(dec, "lateral") else dec.fpn.inner_blocks[0][0].out_channels
    last = dec.fuse[0][1][0] if hasattr(dec, "fuse") else dec.merge[0]
    return {"inner": inner, "out": last.out_channels, "head": model.head.prob[0][0].in_channels}


@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_decoder_inner_and_output_widths(decoder: str) -> None:
    """The receipt baseline's 256 inside / 64 out; unset, both are `channels`, built exactly as a
    one-width decoder (same modules, same initialisation)."""
    base = {"backbone": "resnet18", "decoder": decoder, "k": 50}
    model = build_dbnet({**base, "channels": 16, "inner_channels": 32, "out_channels": 8})
    assert _widths(model) == {"inner": 32, "out": 8, "head": 8}
    out = model(torch.rand(1, 3, 64, 64))
    assert out["prob"].shape == (1, 1, 64, 64) and torch.isfinite(out["prob"]).all()
    torch.manual_seed(0)
    one_width = build_dbnet({**base, "channels": 16})
    torch.manual_seed(0)
    explicit = build_dbnet({**base, "channels": 99, "inner_channels": 16, "out_channels": 16})
    assert _widths(one_width) == {"inner": 16, "out": 16, "head": 16}
    a, b = one_width.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
