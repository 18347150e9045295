"""Pretrained backbones searched together (issue 19, part 1): `model.pretrained: true` loads timm's
weights for whatever backbone the trial has (through timm, from the Hugging Face cache), in-house
weights come as a file, a `{backbone: file}` mapping or a directory, and every backbone a sweep
can produce is checked, before any trial is dispatched, to be a timm model with weights.

Offline throughout (conftest sets HF_HUB_OFFLINE=1): the hub cache is built here, holding a
randomly initialised timm model's state dict where timm looks for its pretrained weights
(`$HF_HOME/hub/models--timm--<repo>/snapshots/<rev>/model.safetensors`, `refs/main` -> <rev>).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.config import SweepConfigError, load_sweep
from sweeper.tasks import check_sweep
from sweeper.tasks.backbones import create_timm_body
from sweeper.tasks.weights import hub_cache_dir, local_weights, loads_weights, missing_weights

SMALL = ("resnet18", "mobilenetv3_small_100")


def _state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A randomly initialised timm model's full state dict (what a hub repo holds); seeds from 1,
    so a body built after `torch.manual_seed(0)` starts from other values."""
    assert seed >= 1
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict[str, torch.Tensor]]:
    """An empty offline Hugging Face cache under HF_HOME; call it with a backbone to publish
    random weights for it where timm looks. huggingface_hub fixed its constants when first
    imported, so this process's are pointed there too (trials read the environment)."""
    import huggingface_hub.constants as hf

    home = tmp_path / "hf"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    assert hub_cache_dir() == home / "hub"

    def publish(name: str, seed: int = 7) -> dict[str, torch.Tensor]:
        repo = timm.create_model(name, pretrained=False).pretrained_cfg["hf_hub_id"]  # timm/resnet18.a1_in1k
        folder = home / "hub" / f"models--{repo.replace('/', '--')}"
        rev = "0123456789abcdef0123456789abcdef01234567"
        state = _state(name, seed)
        _save(folder / "snapshots" / rev / "model.safetensors", state)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(rev)
        return state

    return publish


def _assert_loaded(body: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every weight tensor of the body equals the file's tensor of the same name (timm's feature
    wrappers keep the module names of the model for these two backbones)."""
    loaded = body.state_dict()
    weights = [k for k, v in loaded.items() if v.ndim >= 2]
    assert weights and all(k in state for k in weights), [k for k in weights if k not in state][:5]
    for key in weights:
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)


# ============================================================ loading, in the trial
def test_pretrained_loads_timm_weights_from_the_hub_cache(hub: Callable[..., Any]) -> None:
    state = hub("resnet18")
    torch.manual_seed(0)  # another init than the file's: only loading makes them equal
    body = create_timm_body({"backbone": "resnet18", "pretrained": True}, out_indices=(2, 3))
    _assert_loaded(body, state)
    assert [c["num_chs"] for c in body.feature_info.get_dicts()] == [128, 256]  # timm kwargs pass through
    torch.manual_seed(0)
    scratch = create_timm_body({"backbone": "resnet18", "pretrained": False})
    assert not torch.equal(scratch.state_dict()["conv1.weight"], state["conv1.weight"])


def test_pretrained_tagged_backbone_and_a_detector_built_on_it(hub: Callable[..., Any]) -> None:
    from sweeper.tasks.dbnet.model import build_dbnet

    state = hub("mobilenetv3_small_100")
    model = build_dbnet({"backbone": "mobilenetv3_small_100.lamb_in1k", "pretrained": True, "channels": 16})
    _assert_loaded(model.backbone, state)
    assert model(torch.zeros(1, 3, 64, 64))["prob"].shape == (1, 1, 64, 64)


def test_pretrained_missing_from_the_offline_cache_says_what_to_do(hub: Callable[..., Any]) -> None:
    with pytest.raises(ValueError) as info:
        create_timm_body({"backbone": "mobilenetv3_small_100", "pretrained": True})
    msg = str(info.value)
    assert msg.startswith("model.pretrained: True needs model.weights or timm's pretrained weights for "
                          "'mobilenetv3_small_100' (timm/mobilenetv3_small_100.lamb_in1k) in the Hugging Face cache"), msg
    assert str(hub_cache_dir()) in msg and "HF_HUB_OFFLINE" in msg and "{backbone: file} mapping" in msg, msg


@pytest.mark.parametrize("form", ["mapping", "directory"])
def test_weights_mapping_or_directory_for_two_backbones(form: str, tmp_path: Path, hub: Callable[..., Any]) -> None:
    folder = tmp_path / "weights"
    files = {"resnet18": folder / "resnet18.safetensors", "mobilenetv3_small_100": folder / "mobilenetv3_small_100.pth"}
    states = {name: _state(name, seed) for seed, name in enumerate(SMALL, start=1)}
    for name, path in files.items():
        _save(path, states[name])
    weights = {n: str(p) for n, p in files.items()} if form == "mapping" else str(folder)
    for name in SMALL:
        body = create_timm_body({"backbone": name, "pretrained": True, "weights": weights})
        _assert_loaded(body, states[name])


def test_a_mapping_without_the_backbone_falls_back_to_timm_only_when_pretrained(
        tmp_path: Path, hub: Callable[..., Any]) -> None:
    mapping = {"resnet18": str(_save(tmp_path / "r18.pth", _state("resnet18", 1)))}
    with pytest.raises(ValueError, match=r"^model\.weights: the mapping holds no weights for backbone "
                                         r"'mobilenetv3_small_100'.*set model\.pretrained: true"):
        create_timm_body({"backbone": "mobilenetv3_small_100", "pretrained": False, "weights": mapping})
    state = hub("mobilenetv3_small_100")
    body = create_timm_body({"backbone": "mobilenetv3_small_100", "pretrained": True, "weights": mapping})
    _assert_loaded(body, state)


def test_local_weights_lookup(tmp_path: Path) -> None:
    """Full name first, then without the pretrained tag; a single file is for every backbone."""
    (tmp_path / "resnet18.pth").write_bytes(b"x")
    (tmp_path / "resnet18.a1_in1k.safetensors").write_bytes(b"x")
    assert local_weights("resnet18.a1_in1k", str(tmp_path)) == tmp_path / "resnet18.a1_in1k.safetensors"
    assert local_weights("resnet18.tv_in1k", str(tmp_path)) == tmp_path / "resnet18.pth"
    assert local_weights("resnet34", str(tmp_path)) is None
    assert local_weights("resnet34", "one.pth") == Path("one.pth")
    assert local_weights("resnet18.tv_in1k", {"resnet18": "a.pth"}) == Path("a.pth")
    assert local_weights("resnet18", None) is None
    assert missing_weights("resnet34", True, str(tmp_path / "one.pth")) == (
        f"model.weights: backbone weights file not found: {tmp_path / 'one.pth'}")
    assert missing_weights("resnet34", False, None) is None
    assert loads_weights({"pretrained": True}) and loads_weights({"weights": "a.pth"}) and not loads_weights({})


# ============================================================ the check before dispatch
def _sweep_file(tmp_path: Path, model: str, tail: str = "", task: str = "detection") -> Path:
    data = "data: {train: d/train.json, val: d/val.json, images: d/images, synth: {}}"
    if task == "dbnet":
        data = "data: {format: ufo, train: d/train.json, val: d/val.json, images: d/images, synth: {}}"
    text = (f"name: p\ntask: {task}\n{data}\nbase:\n  model: {model}\n  train: {{epochs: 2, resolution: 64}}\n"
            f"objective: {{metric: {'map50' if task == 'detection' else 'hmean'}, mode: max}}\n"
            "budget: {num_samples: 1}\n" + tail)
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


SEARCH_BOTH = "search:\n  model.backbone: {choice: [resnet18, mobilenetv3_small_100]}\n"


def test_a_searched_backbone_missing_from_the_offline_cache_fails_before_dispatch(
        tmp_path: Path, hub: Callable[..., Any]) -> None:
    hub("resnet18")
    path = _sweep_file(tmp_path, "{pretrained: true}", SEARCH_BOTH)
    sweep = load_sweep(path, cwd=tmp_path)
    with pytest.raises(SweepConfigError) as info:
        check_sweep(sweep)
    exc = info.value
    assert exc.file == path and exc.field == "search.model.backbone", exc
    assert "'mobilenetv3_small_100' (timm/mobilenetv3_small_100.lamb_in1k)" in exc.message, exc
    assert "give model.weights" in exc.message and "unset HF_HUB_OFFLINE" in exc.message, exc
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "search.model.backbone" in res.output and "mobilenetv3_small_100" in res.output, res.output
    hub("mobilenetv3_small_100")
    check_sweep(sweep)  # both cached now
    check_sweep(load_sweep(path, ["model.pretrained=false"], cwd=tmp_path))  # from scratch: nothing to find


def test_online_pretrained_is_left_to_timm(tmp_path: Path, hub: Callable[..., Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE a trial may download: the check does not ask the network."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_sweep(load_sweep(_sweep_file(tmp_path, "{pretrained: true}", SEARCH_BOTH), cwd=tmp_path))


def test_an_ablation_factor_backbone_is_checked(tmp_path: Path, hub: Callable[..., Any]) -> None:
    hub("resnet18")
    typo = "ablation: {factors: {model.backbone: [cspdarknet_53]}, seeds: 1}\n"
    sweep = load_sweep(_sweep_file(tmp_path, "{backbone: resnet18}", typo), cwd=tmp_path)
    with pytest.raises(SweepConfigError) as info:
        check_sweep(sweep)
    assert info.value.field == "ablation.factors.model.backbone", info.value
    assert "unknown timm model 'cspdarknet_53'; did you mean: cspdarknet53" in info.value.message, info.value
    factor = "ablation: {factors: {model.backbone: [mobilenetv3_small_100]}, seeds: 1}\n"
    sweep = load_sweep(_sweep_file(tmp_path, "{backbone: resnet18, pretrained: true}", factor, task="dbnet"),
                       cwd=tmp_path)
    with pytest.raises(SweepConfigError) as info:
        check_sweep(sweep)
    assert info.value.field == "ablation.factors.model.backbone" and "'mobilenetv3_small_100'" in info.value.message
    hub("mobilenetv3_small_100")
    check_sweep(sweep)


def test_weights_cover_what_the_cache_lacks(tmp_path: Path, hub: Callable[..., Any]) -> None:
    """A directory with a file per backbone needs no cache; one without a searched backbone's file
    falls back to the cache, which lacks it: refused, naming that backbone."""
    (tmp_path / "w").mkdir()
    for name in SMALL:
        (tmp_path / "w" / f"{name}.pth").write_bytes(b"only its existence is checked before dispatch")
    check_sweep(load_sweep(_sweep_file(tmp_path, "{pretrained: true, weights: w}", SEARCH_BOTH), cwd=tmp_path))
    (tmp_path / "w" / "resnet18.pth").unlink()
    sweep = load_sweep(_sweep_file(tmp_path, "{pretrained: true, weights: w}", SEARCH_BOTH), cwd=tmp_path)
    with pytest.raises(SweepConfigError, match=r"search\.model\.backbone: model\.pretrained: True needs "
                                               r"model\.weights or timm's pretrained weights for 'resnet18'"):
        check_sweep(sweep)
    with pytest.raises(SweepConfigError, match=r"base\.model\.backbone: model\.backbone: Invalid pretrained tag "
                                               r"\(nope\) for resnet18"):
        check_sweep(load_sweep(_sweep_file(tmp_path, "{backbone: resnet18.nope, pretrained: true}"), cwd=tmp_path))


# ============================================================ paths
def test_weights_paths_are_made_absolute_everywhere(tmp_path: Path) -> None:
    for rel in ("w/a.pth", "w/b.pth", "w/r18.pth"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    searched = "search:\n  model.weights: {choice: [w/a.pth, w/b.pth, null]}\n"
    sweep = load_sweep(_sweep_file(tmp_path, "{pretrained: true}", searched), cwd=tmp_path)
    (dim,) = [d for d in sweep.dimensions if d.key == "model.weights"]
    assert dim.values == (str(tmp_path / "w/a.pth"), str(tmp_path / "w/b.pth"), None)
    sweep = load_sweep(_sweep_file(tmp_path, "{weights: {resnet18: w/r18.pth}}"), cwd=tmp_path)
    assert sweep.base["model"]["weights"] == {"resnet18": str(tmp_path / "w/r18.pth")}
    factors = "ablation: {factors: {model.weights: [w, {resnet18: w/a.pth}]}, seeds: 1}\n"
    sweep = load_sweep(_sweep_file(tmp_path, "{weights: w/r18.pth}", factors), cwd=tmp_path)
    assert sweep.base["model"]["weights"] == str(tmp_path / "w/r18.pth")
    assert sweep.spec.ablation.factors["model.weights"] == [str(tmp_path / "w"), {"resnet18": str(tmp_path / "w/a.pth")}]
    assert [changes for _, changes in sweep.variants][1:] == [{"model.weights": str(tmp_path / "w")},
                                                             {"model.weights": {"resnet18": str(tmp_path / "w/a.pth")}}]


@pytest.mark.parametrize("model, tail, field", [
    ("{pretrained: true}", "search:\n  model.weights: {choice: [w/a.pth, w/nope.pth]}\n", "search.model.weights"),
    ("{weights: {resnet18: w/nope.pth}}", "", "base.model.weights.resnet18"),
    ("{weights: nope}", "", "base.model.weights"),
    ("{}", "ablation: {factors: {model.weights: [w/nope.pth]}, seeds: 1}\n", "ablation.factors.model.weights"),
])
def test_missing_weights_paths_name_their_field(model: str, tail: str, field: str, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a.pth").write_bytes(b"x")
    with pytest.raises(SweepConfigError) as info:
        load_sweep(_sweep_file(tmp_path, model, tail), cwd=tmp_path)
    assert info.value.field == field and "nope" in info.value.message and "not found" in info.value.message, info.value


# ============================================================ the runner
def test_trials_inherit_hf_hub_offline_instead_of_having_it_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from sweeper import runner

    seen: dict[str, Any] = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    assert runner._init_ray(None, None) is True
    assert seen["address"] == "local" and "runtime_env" not in seen, seen
