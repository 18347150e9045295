"""Sweep reports (sweeper.reporting): Markdown, self-contained HTML, PNG figures; no Ray/MLflow."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from sweeper import stats
from sweeper.reporting import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE = "baseline"
BETTER = "model.backbone=resnet50"
SIMILAR = "train.lr=0.01"
ABLATION_VALUES = {  # variant -> map50 per seed; BETTER is clearly above the baseline
    BASELINE: {0: 0.700, 1: 0.712, 2: 0.705},
    BETTER: {0: 0.760, 1: 0.771, 2: 0.768},
    SIMILAR: {0: 0.702, 1: 0.709, 2: 0.711},
}


def _history(final: float, epochs: int) -> list[list[float]]:
    return [[e, round(final * e / epochs, 4)] for e in range(1, epochs + 1)]


def _ablation_data() -> dict:
    trials = []
    for v, (variant, seeds) in enumerate(ABLATION_VALUES.items()):
        for seed, value in seeds.items():
            trials.append({"trial": f"t{v}{seed}", "status": "finished", "variant": variant,
                           "seed": seed, "params": {}, "final": {"map50": value, "epoch": 6},
                           "best": value, "history": {"map50": _history(value, 6)},
                           "stopped_at": None, "error": None})
    trials.append({"trial": "tfail", "status": "failed", "variant": SIMILAR, "seed": 3,
                   "params": {}, "final": None, "best": None, "history": {}, "stopped_at": None,
                   "error": "RuntimeError: CUDA out of memory. " + "x" * 300})
    return {"name": "demo-ablation", "kind": "ablation",
            "objectives": [{"metric": "map50", "mode": "max"}], "searched": [],
            "baseline": BASELINE, "factors": {"model.backbone": ["resnet50"], "train.lr": [0.01]},
            "max_t": 6, "trials": trials}


SEARCH_TRIALS = [  # trial, status, lr, optimizer, best
    ("s1", "finished", 1e-4, "sgd", 0.31),
    ("s2", "finished", 3e-4, "adam", 0.42),
    ("s3", "finished", 1e-3, "sgd", 0.47),
    ("s4", "finished", 3e-3, "adam", 0.58),
    ("s5", "finished", 1e-2, "adam", 0.61),
    ("s6", "stopped", 3e-2, "sgd", 0.22),
    ("s7", "stopped", 1e-1, "sgd", 0.12),
    ("s8", "failed", 5e-2, "adam", None),
]


def _search_data() -> dict:
    trials = []
    for trial, status, lr, opt, best in SEARCH_TRIALS:
        epochs = {"finished": 6, "stopped": 2, "failed": 0}[status]
        trials.append({
            "trial": trial, "status": status, "variant": None, "seed": None,
            "params": {"train.lr": lr, "train.optimizer": opt},
            "final": {"map50": best, "epoch": epochs} if best is not None else None,
            "best": best, "history": {"map50": _history(best, epochs)} if best is not None else {},
            "stopped_at": epochs if status == "stopped" else None,
            "error": "ValueError: loss is nan" if status == "failed" else None})
    return {"name": "demo-search", "kind": "search",
            "objectives": [{"metric": "map50", "mode": "max"}],
            "searched": ["train.lr", "train.optimizer"], "max_t": 6, "trials": trials}


MO_TRIALS = [  # trial, status, map50 (max), latency_ms (min)
    ("m1", "finished", 0.50, 10.0),  # front: fastest
    ("m2", "finished", 0.60, 20.0),  # front
    ("m3", "finished", 0.55, 25.0),  # dominated by m2
    ("m4", "stopped", 0.40, 12.0),   # dominated by m1
    ("m5", "finished", 0.65, 40.0),  # front: most accurate
    ("m6", "failed", None, None),
]
PARETO = {"m1", "m2", "m5"}


def _multi_objective_data() -> dict:
    trials = []
    for i, (trial, status, acc, lat) in enumerate(MO_TRIALS):
        final = {"map50": acc, "latency_ms": lat, "epoch": 4} if acc is not None else None
        trials.append({
            "trial": trial, "status": status, "variant": None, "seed": None,
            "params": {"model.width": 16 * (i + 1), "train.optimizer": "adam" if i % 2 else "sgd"},
            "final": final, "best": acc,
            "history": {"map50": _history(acc, 4), "latency_ms": [[4, lat]]} if acc else {},
            "stopped_at": 4 if status == "stopped" else None,
            "error": "boom" if status == "failed" else None})
    return {"name": "demo-mo", "kind": "search",
            "objectives": [{"metric": "map50", "mode": "max"},
                           {"metric": "latency_ms", "mode": "min"}],
            "searched": ["model.width", "train.optimizer"], "max_t": 4, "trials": trials}


def _run(data: dict, out: Path) -> tuple[dict, list[str]]:
    messages: list[str] = []
    return write_report(data, out, progress=messages.append), messages


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    return _run(_ablation_data(), tmp_path_factory.mktemp("ablation"))


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    return _run(_search_data(), tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:
    return _run(_multi_objective_data(), tmp_path_factory.mktemp("multi"))


def _table_rows(md: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header line starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def _check_outputs(result: dict) -> None:
    assert result["markdown"].is_file() and result["html"].is_file()
    assert result["markdown"].name == "report.md" and result["html"].name == "report.html"
    for fig in result["figures"]:
        assert fig.parent.name == "figures" and fig.suffix == ".png"
        assert fig.read_bytes()[:8] == PNG_MAGIC
        with Image.open(fig) as img:
            img.verify()
    md = result["markdown"].read_text()
    for fig in result["figures"]:
        assert f"](figures/{fig.name})" in md
    page = result["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') == len(result["figures"])
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*https?://""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()


# ---------------------------------------------------------------- ablation


def test_ablation_outputs_and_progress(ablation: tuple[dict, list[str]]) -> None:
    result, messages = ablation
    _check_outputs(result)
    names = {f.name for f in result["figures"]}
    assert {"ablation_map50.png", "learning_curves.png"} <= names
    assert "ablation table" in messages and "learning curves" in messages
    assert messages.index("ablation table") < messages.index("writing report")


def test_ablation_table_matches_stats(ablation: tuple[dict, list[str]]) -> None:
    md = ablation[0]["markdown"].read_text()
    assert ("| variant | n | mean ± 95% CI | Δ vs baseline [95% CI] | p | p (Holm) | test | "
            "significant |") in md
    expected = stats.ablation_table(ABLATION_VALUES, BASELINE, "max")
    rows = _table_rows(md, "| variant | n |")
    assert [r[0] for r in rows] == [e["variant"] for e in expected]
    for row, exp in zip(rows, expected):
        assert row[1] == str(exp["n"])
        mean, half = row[2].split(" ± ")
        assert mean == f"{exp['mean']:.4f}"
        assert half == f"{exp['ci_high'] - exp['mean']:.4f}"
        if exp["variant"] == BASELINE:
            assert row[3:] == ["—"] * 5
            continue
        assert row[3] == f"{exp['diff']:+.4f} [{exp['diff_ci_low']:.4f}, {exp['diff_ci_high']:.4f}]"
        assert row[4] == f"{exp['p']:.3g}" and row[5] == f"{exp['p_holm']:.3g}"
        assert row[6] == exp["test"] == "paired t"
        assert row[7] == ("**yes**" if exp["significant"] else "no")
    by_variant = {r[0]: r for r in rows}
    assert by_variant[BETTER][7] == "**yes**" and by_variant[SIMILAR][7] == "no"
    assert "- Trials: 10 (9 finished, 1 failed)" in md
    assert "Student-t" in md and "Holm" in md and "Welch" in md and "0.05" in md


def test_ablation_html_has_same_table(ablation: tuple[dict, list[str]]) -> None:
    page = ablation[0]["html"].read_text()
    assert "<th>Δ vs baseline [95% CI]</th>" in page
    assert f"<td>{BETTER}</td>" in page and "<strong>yes</strong>" in page


def test_failed_trial_error_is_truncated(ablation: tuple[dict, list[str]]) -> None:
    md = ablation[0]["markdown"].read_text()
    rows = _table_rows(md, "| trial | error |")
    assert rows[0][0] == "tfail"
    assert rows[0][1].startswith("RuntimeError: CUDA out of memory.") and len(rows[0][1]) == 120


# ---------------------------------------------------------------- search


def test_search_outputs_and_progress(search: tuple[dict, list[str]]) -> None:
    result, messages = search
    _check_outputs(result)
    names = {f.name for f in result["figures"]}
    assert names == {"learning_curves.png", "parallel_coordinates.png", "scatter_train.lr.png",
                     "scatter_train.optimizer.png", "importances.png", "rank_correlation.png"}
    for step in ("learning curves", "parallel coordinates", "parameter importances", "early-stopping diagnosis"):
        assert step in messages


def test_search_top_table_best_first(search: tuple[dict, list[str]]) -> None:
    rows = _table_rows(search[0]["markdown"].read_text(), "| trial | status | epoch | best |")
    ranked = sorted((t for t in SEARCH_TRIALS if t[4] is not None), key=lambda t: -t[4])
    assert [r[0] for r in rows] == [t[0] for t in ranked]
    assert rows[0][3] == "0.6100" and rows[0][4] == "train.lr=0.01, train.optimizer=adam"
    assert rows[-1][:3] == ["s7", "stopped", "2"]


def test_search_importances_table(search: tuple[dict, list[str]]) -> None:
    md = search[0]["markdown"].read_text()
    rows = _table_rows(md, "| parameter | importance |")
    assert {r[0] for r in rows} == {"train.lr", "train.optimizer"}
    assert sum(float(r[1]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert "<th>importance</th>" in search[0]["html"].read_text()


def test_importances_failure_is_a_note(tmp_path: Path) -> None:
    data = _search_data()
    for t in data["trials"]:
        t["params"]["train.optimizer"] = "sgd"  # a single distinct value
        t["params"]["train.lr"] = 0.01
    result, _ = _run(data, tmp_path)
    md = result["markdown"].read_text()
    assert "## Search" in md and "### Parameter importances" in md
    assert ("Importances unavailable (ValueError: every searched parameter took a single value)"
            in md)
    assert "importances.png" not in {f.name for f in result["figures"]}
    _check_outputs(result)


def test_report_is_deterministic(tmp_path: Path) -> None:
    first, _ = _run(_search_data(), tmp_path / "a")
    second, _ = _run(_search_data(), tmp_path / "b")

    def body(path: Path) -> str:
        return "\n".join(line for line in path.read_text().splitlines()
                         if not line.startswith("Generated"))

    assert body(first["markdown"]) == body(second["markdown"])
    for a, b in zip(first["figures"], second["figures"]):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_search_has_the_early_stopping_section(search: tuple[dict, list[str]]) -> None:
    """The fabricated search's curves (value * epoch / 6) never change order: rho 1 at every
    epoch over the 5 trials that reached epoch 6; the 2 stopped at epoch 2 are truncated."""
    md = search[0]["markdown"].read_text()
    section = md.split("## Can early stopping be trusted?\n", 1)[1].split("\n## ", 1)[0]
    assert section.startswith("\nRanks settle at epoch 1. Recommended: scheduler: {name: asha, grace_period: 1}.")
    rows = _table_rows(section, "| epoch | n | rho | 95% CI |")
    assert rows == [[str(e), "5", "1.00", "[1.00, 1.00]", "settled"] for e in range(1, 6)]
    assert "- 2 trial(s) stopped before epoch 6" in section and "survivors" in section
    assert "Can early stopping be trusted?" in search[0]["html"].read_text()


def test_early_stopping_section_says_why_it_cannot_diagnose(tmp_path: Path) -> None:
    data = _search_data()
    data["trials"] = [t for t in data["trials"] if t["status"] != "finished"] + data["trials"][:1]  # s6, s7, s8, s1
    result, _ = _run(data, tmp_path)
    md = result["markdown"].read_text()
    section = md.split("## Can early stopping be trusted?\n", 1)[1].split("\n## ", 1)[0]
    assert section.strip() == ("Not diagnosed: 3 trial(s) reported map50 per epoch; a rank correlation needs at "
                               "least 4: run a pilot with more trials.")
    assert "rank_correlation.png" not in {f.name for f in result["figures"]}


def test_ablation_report_has_no_early_stopping_section(ablation: tuple[dict, list[str]]) -> None:
    assert "Can early stopping be trusted?" not in ablation[0]["markdown"].read_text()


# ---------------------------------------------------------------- multi-objective


def test_pareto_table_lists_non_dominated_trials(multi: tuple[dict, list[str]]) -> None:
    result, messages = multi
    _check_outputs(result)
    assert "pareto front" in messages
    assert "pareto.png" in {f.name for f in result["figures"]}
    rows = _table_rows(result["markdown"].read_text(), "| trial | variant / params |")
    assert {r[0] for r in rows} == PARETO
    assert [r[0] for r in rows] == ["m5", "m2", "m1"]  # best map50 first
    assert rows[2][2:] == ["0.5000", "10.0000"]
    assert "<td>m5</td>" in result["html"].read_text()


# ---------------------------------------------------------------- degenerate sweeps


@pytest.mark.parametrize("kind", ["search", "ablation"])
def test_all_failed_sweep_still_reports(tmp_path: Path, kind: str) -> None:
    data = _search_data() if kind == "search" else _ablation_data()
    data["objectives"].append({"metric": "map_small", "mode": "max"})
    for t in data["trials"]:
        t.update(status="failed", final=None, best=None, history={}, error="OSError: disk full")
    result, messages = _run(data, tmp_path)
    _check_outputs(result)
    md = result["markdown"].read_text()
    assert result["figures"] == []
    assert f"({len(data['trials'])} failed)" in md
    assert len(_table_rows(md, "| trial | error |")) == len(data["trials"])
    assert messages[-1] == "writing report"


def test_empty_sweep_still_reports(tmp_path: Path) -> None:
    result, _ = _run({"name": "empty", "kind": "search", "objectives": [], "trials": []}, tmp_path)
    md = result["markdown"].read_text()
    assert "# Sweep report: empty" in md and "- Trials: 0 (none)" in md
    _check_outputs(result)


# --------------------------------------------------------------------------- grouped leaderboards
FOLD_FINALS = {  # (variant as tagged, seed, data.fold as logged) -> map50 at the last epoch
    ("baseline", 0, "0"): 0.50, ("baseline", 1, "0"): 0.52,
    ("data.fold=1", 0, "1"): 0.60, ("data.fold=1", 1, "1"): 0.61,
    ("data.fold=2", 0, "2"): 0.40, ("data.fold=2", 1, "2"): 0.43,
    ("recipe_b", 0, "0"): 0.55, ("recipe_b", 1, "0"): 0.58,
    ("recipe_b,data.fold=1", 0, "1"): 0.66, ("recipe_b,data.fold=1", 1, "1"): 0.65,
    ("recipe_b,data.fold=2", 0, "2"): 0.47, ("recipe_b,data.fold=2", 1, "2"): 0.49,
}


def _fold_board() -> dict:
    """A leaderboard (as sweeper.store reads it) of a full-factorial ablation: a named variant x folds."""
    rows = [{"trial": f"t{i}", "status": "finished", "variant": v, "seed": str(s), "data.fold": f,
             "data.train": "/d/train.json", "map50": x, "final": x} for i, ((v, s, f), x) in enumerate(FOLD_FINALS.items())]
    rows.append({"trial": "tx", "status": "failed", "variant": "recipe_b", "seed": "2", "data.fold": "0", "map50": None,
                 "final": None})
    variants = list(dict.fromkeys(v for v, _, _ in FOLD_FINALS))
    return {"name": "cv", "objective": "map50", "mode": "max", "searched": ["data.fold", "model.fpn_channels"],
            "ablation": {"factors": {"data.fold": [1, 2]}, "named": {"recipe_b": {"model.fpn_channels": 16}},
                         "seeds": [0, 1], "variants": variants}, "rows": rows}


def test_group_variant_pools_folds_and_pairs_by_seed_and_fold() -> None:
    from sweeper.reporting import group_rows

    rows, columns, title = group_rows(_fold_board(), "variant")
    assert [r["variant"] for r in rows] == ["baseline", "recipe_b"] and "pooled over folds" in title
    groups: dict[str, dict[str, float]] = {}  # recipe -> (seed, fold) -> value
    for (v, s, f), x in FOLD_FINALS.items():
        recipe = "recipe_b" if v.startswith("recipe_b") else "baseline"
        groups.setdefault(recipe, {})[f"seed {s}, fold {f}"] = x
    expected = {r["variant"]: r for r in stats.ablation_table(groups, "baseline", "max")}
    recipe = next(r for r in rows if r["variant"] == "recipe_b")
    assert recipe["n"] == 6 and recipe["test"] == "paired t"  # 3 folds x 2 seeds, paired on both
    assert recipe["map50 mean"] == pytest.approx(expected["recipe_b"]["mean"])
    assert recipe["Δ vs baseline"] == pytest.approx(expected["recipe_b"]["diff"])
    assert recipe["p (Holm)"] == pytest.approx(expected["recipe_b"]["p_holm"])


def test_group_fold_gives_each_variant_per_fold() -> None:
    from sweeper.reporting import group_rows

    rows, columns, _ = group_rows(_fold_board(), "data.fold")
    assert columns == ["variant", "data.fold", "n", "map50 mean", "± 95% CI"]
    assert [(r["variant"], r["data.fold"], r["n"]) for r in rows] == [
        ("baseline", "0", 2), ("baseline", "1", 2), ("baseline", "2", 2),
        ("recipe_b", "0", 2), ("recipe_b", "1", 2), ("recipe_b", "2", 2)]
    assert rows[1]["map50 mean"] == pytest.approx(0.605)
    assert rows[1]["± 95% CI"] == pytest.approx((lambda s: (s.ci_high - s.ci_low) / 2)(stats.summarize([0.60, 0.61])))


def test_group_by_a_data_key_of_a_search() -> None:
    from sweeper.reporting import group_rows

    rows = [{"trial": f"t{i}", "status": "finished", "data.train": t, "data.fold": str(i % 2), "final": x}
            for i, (t, x) in enumerate([("a.json", 0.3), ("b.json", 0.5), ("a.json", 0.35), ("b.json", 0.55)])]
    board = {"name": "s", "objective": "map50", "mode": "max", "searched": ["data.train"], "rows": rows}
    grouped, columns, _ = group_rows(board, "data.train")
    assert [(r["data.train"], r["n"]) for r in grouped] == [("b.json", 2), ("a.json", 2)]
    assert grouped[0]["map50 mean"] == pytest.approx(0.525)
    assert [r["data.fold"] for r in group_rows(board, "data.fold")[0]] == ["1", "0"]  # a logged, unsearched data key
    with pytest.raises(LookupError, match="trials have no 'data.val'"):
        group_rows(board, "data.val")
