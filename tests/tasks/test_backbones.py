"""The backbone-name check: timm's answer, from a per-timm-version cache without importing torch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.tasks import backbones
from sweeper.tasks.backbones import check_backbone


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name", ["resnet18", "resnet18.a1_in1k", "mobilenetv3_small_100", "swin_tiny_patch4_window7_224"])
def test_timm_names_are_accepted(cache: Path, name: str) -> None:
    check_backbone(name)
    check_backbone(name)  # the second answer comes from the cache


@pytest.mark.parametrize("name, suggestion", [("resnet81", "resnet18"), ("mobilenetv3_smal_100", "mobilenetv3_small_100")])
def test_typos_name_the_closest_models(cache: Path, name: str, suggestion: str) -> None:
    for _ in range(2):  # without and with the cache
        with pytest.raises(ValueError, match=rf"model\.backbone: unknown timm model '{name}'; did you mean: .*{suggestion}"):
            check_backbone(name)


@pytest.mark.parametrize("name", [None, 18, "", ".a1_in1k"])
def test_non_names_are_refused(cache: Path, name: object) -> None:
    with pytest.raises(ValueError, match="unknown timm model"):
        check_backbone(name)


def test_deprecated_aliases_are_not_listed_but_timm_accepts_them(cache: Path) -> None:
    import timm

    alias = "convnext_base_in22k"
    assert timm.is_model(alias) and alias not in timm.list_models()
    check_backbone(alias)


def test_cache_is_per_timm_version_and_holds_timm_list(cache: Path) -> None:
    import timm

    check_backbone("resnet18")
    files = list(cache.glob("timm-*-models.txt"))
    assert [f.name for f in files] == [f"timm-{timm.__version__}-models.txt"]
    assert files[0].read_text().split() == timm.list_models()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b"\n\n"])
def test_an_unreadable_or_empty_cache_is_rebuilt(cache: Path, content: bytes) -> None:
    cache.mkdir(parents=True)
    path = backbones._cache_file()
    path.write_bytes(content)
    check_backbone("resnet18")
    assert "resnet18" in path.read_text().split()


def test_a_read_only_cache_dir_still_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        monkeypatch.setenv("SWEEPER_CACHE_DIR", "/proc/sweeper-cache")  # cannot be created, even by root
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("SWEEPER_CACHE_DIR", str(ro / "cache"))
    check_backbone("resnet18")
    with pytest.raises(ValueError, match="resnet81"):
        check_backbone("resnet81")


def test_once_cached_the_check_imports_neither_timm_nor_torch(cache: Path) -> None:
    """What the launch driver gains: no torch import before Ray starts, nor its teardown at exit."""
    check_backbone("resnet18")
    code = ("import sys; from sweeper.tasks import backbones; backbones.check_backbone('resnet18.a1_in1k'); "
            "print(sorted(m for m in ('timm', 'torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "SWEEPER_CACHE_DIR": str(cache)})
    assert out.stdout.strip() == "[]"


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SWEEPER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backbones.cache_dir() == tmp_path / "sweeper"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert backbones.cache_dir() == Path.home() / ".cache" / "sweeper"


def test_the_sweep_check_of_backbones_without_weights_imports_no_torch(cache: Path, tmp_path: Path) -> None:
    """check_sweep checks every backbone a sweep can produce (here: searched choices); without
    `pretrained` or `weights` there are no weights to look for, so timm stays unimported."""
    check_backbone("resnet18")  # fills the cache
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\ntask: detection\ndata: {train: d/train.json, val: d/val.json, images: d/images, "
                     "synth: {}}\nsearch:\n  model.backbone: {choice: [resnet18, mobilenetv3_small_100.lamb_in1k]}\n"
                     "objective: {metric: map50}\nbudget: {num_samples: 2}\n")
    code = ("import sys; from sweeper.config import load_sweep; from sweeper.tasks import check_sweep; "
            f"check_sweep(load_sweep({str(sweep)!r})); "
            "print(sorted(m for m in ('timm', 'torch', 'torchvision', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "SWEEPER_CACHE_DIR": str(cache)})
    assert out.stdout.strip() == "[]"
