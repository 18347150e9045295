"""Promotion-based ASHA (`sweeper.promotion`) driven with fabricated results through Ray's
scheduler API, by a light controller that runs trials one epoch at a time on N workers."""
from __future__ import annotations

import json
import pickle
import random

import pytest

from sweeper.promotion import PausingLimiter, PromotionASHA
from sweeper.results import ASHA, STOP_REASON
from sweeper.rungs import promotion_rungs

CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"


class LightTrial:
    def __init__(self, trial_id: str, score: float) -> None:
        self.trial_id, self.score = trial_id, score
        self.status = "PENDING"
        self.last_result: dict | None = None
        self.epochs: list[int] = []  # every epoch it trained, in order


class LightController:
    """What a replay needs: get_trials, stop_trial (which tells the scheduler, as Tune does)."""

    def __init__(self, scheduler: PromotionASHA) -> None:
        self.scheduler, self.trials = scheduler, []

    def get_trials(self) -> list[LightTrial]:
        return self.trials

    def stop_trial(self, trial: LightTrial) -> None:
        assert trial.status == "PAUSED"
        self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"


def replay(scores: list[float], workers: int, scheduler: PromotionASHA, seed: int = 0,
           mode: str = "max") -> LightController:
    """Run every trial through the scheduler: a free worker takes what `choose_trial_to_run` gives,
    or a new trial when it gives none; a random running trial reports its next epoch."""
    rng = random.Random(seed)
    ctl = LightController(scheduler)
    scheduler.set_search_properties("score", mode)
    running: list[LightTrial] = []
    for _ in range(10_000):
        while len(running) < workers:
            trial = scheduler.choose_trial_to_run(ctl)
            if trial is None and len(ctl.trials) < len(scores):
                trial = LightTrial(f"t{len(ctl.trials) + 1}", scores[len(ctl.trials)])
                ctl.trials.append(trial)
                scheduler.on_trial_add(ctl, trial)
                trial = scheduler.choose_trial_to_run(ctl)
            if trial is None:
                break
            assert trial.status in ("PENDING", "PAUSED")
            trial.status = "RUNNING"
            running.append(trial)
        if not running:
            return ctl
        trial = running[rng.randrange(len(running))] if workers > 1 else running[0]
        epoch = (trial.last_result or {}).get("epoch", 0) + 1
        trial.epochs.append(epoch)
        result = {"epoch": epoch, "score": trial.score}
        decision = scheduler.on_trial_result(ctl, trial, result)
        trial.last_result = result
        if decision == STOP:
            running.remove(trial)
            trial.status = "TERMINATED"
            scheduler.on_trial_complete(ctl, trial, result)
        elif decision == PAUSE:
            running.remove(trial)
            trial.status = "PAUSED"
    raise AssertionError("the sweep did not end")


@pytest.mark.parametrize(("grace", "factor", "max_t", "rungs"), [
    (1, 3, 9, [1, 3]), (1, 3, 27, [1, 3, 9]), (1, 2.5, 20, [1, 3, 7, 16]), (2, 2, 16, [2, 4, 8]),
    (1, 3, 1, []), (3, 3, 3, []), (1, 4, 16, [1, 4]), (1, 1.5, 5, [1, 2, 3, 4]),
])
def test_promotion_rungs(grace: int, factor: float, max_t: int, rungs: list[int]) -> None:
    assert promotion_rungs(grace, factor, max_t) == rungs
    assert PromotionASHA(max_t=max_t, grace_period=grace, reduction_factor=factor).rungs == rungs


def test_promote_one_worker_follows_the_paper_step_by_step() -> None:
    # worked by hand: t3 (8) and t5 (9) are the best of rung 1 when they arrive and carry on;
    # t7 (7) joins the top 3 of rung 1 once 9 trials are there and is promoted from its pause;
    # at rung 3 t5 beats t3 and t7 and runs to max_t; the other 8 are ended when nothing is left
    scores = [5, 3, 8, 1, 9, 2, 7, 4, 6]
    ctl = replay(scores, 1, PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9))
    by_id = {t.trial_id: t for t in ctl.trials}
    assert {tid: t.epochs[-1] for tid, t in by_id.items()} == {
        "t1": 1, "t2": 1, "t3": 3, "t4": 1, "t5": 9, "t6": 1, "t7": 3, "t8": 1, "t9": 1}
    assert sum(len(t.epochs) for t in ctl.trials) == 9 + 3 * 2 + 6  # 21 trial-epochs of 81
    for t in ctl.trials:
        assert t.epochs == list(range(1, len(t.epochs) + 1))  # no epoch trained twice, none skipped
        assert t.status == "TERMINATED"
        assert (t.last_result.get(STOP_REASON) == ASHA) == (t.trial_id != "t5")


def test_min_mode_ranks_the_other_way() -> None:
    # the same trials with negated scores under mode min: the same decisions, epoch for epoch
    scores = [5, 3, 8, 1, 9, 2, 7, 4, 6]
    ran = {}
    for mode, sign in (("max", 1), ("min", -1)):
        ctl = replay([sign * s for s in scores], 1,
                     PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9), mode=mode)
        ran[mode] = [t.epochs for t in ctl.trials]
    assert ran["max"] == ran["min"]


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
@pytest.mark.parametrize("seed", range(5))
def test_any_order_ends_with_the_best_at_max_t_and_the_rest_cut(workers: int, seed: int) -> None:
    rng = random.Random(seed)
    scores = [rng.random() for _ in range(27)]
    sched = PromotionASHA(max_t=27, grace_period=1, reduction_factor=3, num_samples=27)
    ctl = replay(scores, workers, sched, seed=seed)
    assert len(ctl.trials) == 27 and all(t.status == "TERMINATED" for t in ctl.trials)
    best = max(ctl.trials, key=lambda t: t.score)
    assert best.epochs[-1] == 27 and not best.last_result.get(STOP_REASON)
    for t in ctl.trials:
        assert t.epochs == list(range(1, len(t.epochs) + 1))
        ended_early = t.epochs[-1] < 27
        assert ended_early == (t.last_result.get(STOP_REASON) == ASHA)
        assert t.epochs[-1] in (1, 3, 9, 27)  # a trial only stops at a rung
    # every rung promoted at least its top third, and the ones it promoted were in its top third
    # when they were promoted, so at most one per trial recorded since
    state = sched.rung_state()
    for (epoch, recorded, promoted), higher in zip(state["rungs"], [r[1] for r in state["rungs"][1:]] + [None]):
        assert len(promoted) >= len(recorded) // 3
        reached = {t.trial_id for t in ctl.trials if t.epochs[-1] > epoch}
        assert set(promoted) == reached
        if higher is not None:
            assert set(higher) == reached
    # ASHA's cost: far below training all 27 to the end, at least what synchronous halving needs
    total = sum(len(t.epochs) for t in ctl.trials)
    assert 27 + 9 * 2 + 3 * 6 + 18 <= total < 27 * 27 // 4


def test_new_trials_wait_while_a_promotion_is_due() -> None:
    sched = PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9)
    sched.set_search_properties("score", "max")
    ctl = LightController(sched)
    for i, score in enumerate([3, 2, 1]):  # t1 (the best of three) waits: it reported before the others
        t = LightTrial(f"t{i + 1}", score)
        ctl.trials.append(t)
        sched.on_trial_add(ctl, t)
        t.status = "RUNNING"
        assert sched.on_trial_result(ctl, t, {"epoch": 1, "score": score}) == PAUSE
        t.status, t.last_result = "PAUSED", {"epoch": 1, "score": score}
    new = LightTrial("t4", 9)
    ctl.trials.append(new)
    sched.on_trial_add(ctl, new)
    assert sched.promotable() == [(0, "t1")]
    assert sched.choose_trial_to_run(ctl) is ctl.trials[0]  # the promotion, before the new trial
    assert sched.choose_trial_to_run(ctl) is new


def test_a_trial_that_ends_itself_at_a_rung_is_counted_not_paused() -> None:
    sched = PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=3)
    sched.set_search_properties("score", "max")
    ctl = LightController(sched)
    t = LightTrial("t1", 1)
    ctl.trials.append(t)
    assert sched.on_trial_result(ctl, t, {"epoch": 1, "score": 1, STOP_REASON: "patience"}) == CONTINUE
    assert sched.rung_state()["rungs"][0][1] == {"t1": 1} and not sched.rung_state()["waiting"]
    assert sched.on_trial_result(ctl, t, {"epoch": 2}) == CONTINUE  # no objective: nothing to judge
    assert sched.on_trial_result(ctl, t, {"epoch": 9, "score": 1}) == STOP  # max_t


def test_paused_trials_free_their_slot_in_the_limiter() -> None:
    from ray.tune.search import Searcher

    class CountingSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__(metric="score", mode="max")
            self.asked = 0

        def suggest(self, trial_id: str) -> dict:
            self.asked += 1
            return {"x": self.asked}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

    limiter = PausingLimiter(CountingSearcher(), max_concurrent=2)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two running: full
    limiter.set_paused(frozenset({"a", "b"}), hold=False)  # both wait at a rung: two free workers
    assert limiter.suggest("c") and limiter.suggest("d") and limiter.suggest("e") is None
    limiter.set_paused(frozenset({"a", "b", "c"}), hold=True)  # a promotion is due: the worker is its
    assert limiter.suggest("e") is None
    limiter.set_paused(frozenset({"a", "b", "c"}), hold=False)
    assert limiter.suggest("e") == {"x": 5}


def test_scheduler_tells_the_searcher_and_never_starves_it() -> None:
    sched = PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9)
    told = []

    class Searcher:
        def set_paused(self, ids: frozenset[str], hold: bool) -> None:
            told.append((set(ids), hold))

    class Alg:
        searcher = Searcher()

    class Controller(LightController):
        search_alg = Alg()

    sched.set_search_properties("score", "max")
    ctl = Controller(sched)
    for i, score in enumerate([1, 2, 3]):
        t = LightTrial(f"t{i + 1}", score)
        ctl.trials.append(t)
        t.status = "RUNNING"
        decision = sched.on_trial_result(ctl, t, {"epoch": 1, "score": score})
        t.status = "PAUSED" if decision == PAUSE else "RUNNING"
        t.last_result = {"epoch": 1, "score": score}
    assert told == [({"t1"}, False), ({"t1", "t2"}, False)]  # t3 is the best of three: it carries on


def test_rungs_and_waiting_trials_survive_a_restore(tmp_path) -> None:
    path = tmp_path / "asha_rungs.json"
    sched = PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9, state_path=str(path))
    sched.set_search_properties("score", "max")
    ctl = LightController(sched)
    for i, score in enumerate([5, 3, 8, 1]):
        t = LightTrial(f"t{i + 1}", score)
        ctl.trials.append(t)
        t.status = "RUNNING"
        decision = sched.on_trial_result(ctl, t, {"epoch": 1, "score": score})
        t.status, t.last_result = ("PAUSED" if decision == PAUSE else "RUNNING"), {"epoch": 1, "score": score}
    assert json.loads(path.read_text())["waiting"] == {"t1": 0, "t2": 0, "t4": 0}
    pickled = pickle.dumps(PromotionASHA(max_t=9, grace_period=1, reduction_factor=3, num_samples=9,
                                         state_path=str(path)))  # as Tune pickled it at the start
    restored = pickle.loads(pickled)
    assert restored.rung_state() == sched.rung_state()
    assert restored.rung_state()["rungs"][0][2] == ["t3"]

    # Tune hands paused trials back as PENDING: the scheduler pauses them again, before they start
    class RestoredController(LightController):
        def _set_trial_status(self, trial: LightTrial, status: str) -> None:
            trial.status = status

    ctl2 = RestoredController(restored)
    for t in ctl.trials:
        ctl2.trials.append(t)
        t.status = "PENDING" if t.status == "PAUSED" else t.status
    ctl.trials[2].status = "PENDING"  # t3 was running: it resumes
    assert restored.choose_trial_to_run(ctl2) is ctl.trials[2]
    assert [t.status for t in ctl2.trials] == ["PAUSED", "PAUSED", "PENDING", "PAUSED"]


def test_a_different_configuration_starts_afresh(tmp_path) -> None:
    path = tmp_path / "asha_rungs.json"
    path.write_text(json.dumps({"rungs": [[1, {"t1": 1.0}, []], [3, {}, []]], "waiting": {"t1": 0}, "ended": []}))
    same = pickle.loads(pickle.dumps(PromotionASHA(max_t=9, reduction_factor=3, state_path=str(path))))
    other = pickle.loads(pickle.dumps(PromotionASHA(max_t=27, reduction_factor=3, state_path=str(path))))
    assert same.rung_state()["waiting"] == {"t1": 0}
    assert other.rung_state()["waiting"] == {} and all(not r[1] for r in other.rung_state()["rungs"])


# ---------------------------------------------------------------------- the sweep file and the plan
NOOP = """name: t
task: noop
base: {train: {epochs: 9}}
search: {x: {uniform: [0, 1]}}
objective: {metric: score}
scheduler: {promote: true}
budget: {num_samples: 4}
"""

REFUSED = [
    ("ablation", NOOP.replace("search: {x: {uniform: [0, 1]}}", "ablation: {factors: {x: [0.1, 0.2]}, seeds: 1}")
     .replace("budget: {num_samples: 4}\n", ""), "scheduler.promote", "an ablation runs every variant alike"),
    ("nothing searched", NOOP.replace("search: {x: {uniform: [0, 1]}}\n", "").replace("4}", "1}"),
     "scheduler.promote", "nothing is searched here"),
    ("command", """name: t
task: command
command: {run: "python train.py {overrides}", workdir: ., epochs: 9}
search: {lr: {loguniform: [1.0e-4, 1.0e-2]}}
objective: {metric: val/loss, mode: min}
scheduler: {promote: true}
budget: {num_samples: 4}
""", "scheduler.promote", "not supported for task: command"),
    ("fifo", NOOP.replace("{promote: true}", "{name: fifo, promote: true}"), "scheduler.promote", "has no rungs"),
    ("fewer trials than the factor", NOOP.replace("4}", "2}"), "budget.num_samples", "every trial would stop"),
]


@pytest.mark.parametrize(("text", "field", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_promote_where_it_cannot_work_is_refused_at_load(tmp_path, text: str, field: str, words: str) -> None:
    from typer.testing import CliRunner

    from sweeper.cli import app

    (tmp_path / "train.py").write_text("print('never run')\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2, res.output
    assert f"{path}: {field}: " in res.output and words in res.output and "Traceback" not in res.output


def test_the_dry_run_plan_says_promotion(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sweeper.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(NOOP.replace("{promote: true}", "{promote: true, grace_period: 1}"))
    res = CliRunner().invoke(app, ["launch", "s.yaml", "--dry-run"])
    assert res.exit_code == 0, res.output
    plan = " ".join(res.output.split())
    assert "ASHA (promotion) on `epoch`: a trial pauses at epochs [1, 3]" in plan
    assert "dry run: nothing was started" in plan


def test_a_paused_trial_ended_without_a_result_reaches_the_searcher_with_its_last() -> None:
    from ray.tune.search import Searcher

    class Recording(Searcher):
        def __init__(self) -> None:
            super().__init__(metric="score", mode="max")
            self.completed: list = []

        def suggest(self, trial_id: str) -> dict:
            return {"x": 1}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.completed.append((trial_id, result, error))

    inner = Recording()
    limiter = PausingLimiter(inner, max_concurrent=2)
    limiter.suggest("a"), limiter.suggest("b")
    limiter.on_trial_result("a", {"epoch": 1, "score": 0.5})
    limiter.on_trial_complete("a")  # Tune's stop_trial of a PAUSED trial passes no result
    limiter.on_trial_result("b", {"epoch": 1, "score": 0.1})
    limiter.on_trial_complete("b", error=True)
    assert inner.completed == [("a", {"epoch": 1, "score": 0.5}, False), ("b", None, True)]
    assert limiter.live_trials == set()
