"""The gradient-vanishing study: its pieces, and the study end to end in a tiny configuration."""

import dataclasses
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import vanishing  # noqa: E402


def tiny(task="adding", T=10, steps=20, H=4, seeds=(0, 1, 2), **kw):
    """``(task, recipe, seeds)`` of a tiny row."""
    base = dict(steps=steps, hidden_size=H, batch=4, lr=1e-2, eval_every=10, test_size=8)
    return bench.tasks.get(task, T), bench.Recipe(**{**base, **kw}), seeds


# ----------------------------------------------------------------------------- pure pieces


def test_decay_rate_recovers_a_geometric_series():
    T = 50
    norms = 0.8 ** (T - 1 - np.arange(T)) * 3.0
    assert vanishing.decay_rate(norms) == pytest.approx(0.8, rel=1e-6)  # rnnjax.log10_decay_rate fits in float32
    lg = np.log10(norms)
    assert vanishing.decay_rate(log10_norms=lg) == pytest.approx(0.8, rel=1e-6)
    # far beyond float32's range in log space (1e-400): the fit still sees every step
    lg_deep = (T - 1 - np.arange(T)) * -10.0
    assert vanishing.decay_rate(log10_norms=lg_deep) == pytest.approx(1e-10, rel=1e-6)
    norms[:10] = 0.0  # underflowed steps (log -inf) are ignored
    assert vanishing.decay_rate(norms) == pytest.approx(0.8, rel=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        vanishing.decay_rate(norms, log10_norms=lg)


def test_steps_to_solve_is_the_first_evaluation_below_the_threshold():
    steps = np.array([10, 20, 30, 40, 50])
    losses = np.array([0.5, np.nan, 0.09, 0.2, 0.01])  # solved at 30, then worse, then better
    assert vanishing.steps_to_solve(steps, losses, 0.1) == 30
    assert vanishing.steps_to_solve(steps, losses, 0.01) is None  # strictly below
    assert vanishing.steps_to_solve(steps, [np.inf, 1, 1, 1, 0.0], 0.1) == 50
    with pytest.raises(ValueError, match="one length"):
        vanishing.steps_to_solve(steps, losses[:3], 0.1)
    # median over seeds, an unsolved seed counting as never
    assert vanishing.median_steps([30, None, 10]) == 30
    assert vanishing.median_steps([30, None, 10, 20]) == 25
    assert vanishing.median_steps([30, None, None]) is None
    assert vanishing.median_steps([30, None, None, 10]) is None


def test_curve_styles_are_distinct_for_25_rows():
    styles = [tuple(sorted(vanishing.line_style(i).items())) for i in range(25)]
    assert len(set(styles)) == 25
    for a, b in zip(styles, styles[1:]):  # neighbours differ in colour AND line style
        assert a[0] != b[0] and a[1] != b[1]


def test_literature_comparison_reports_longest_solved_or_says_nothing_is_finished():
    def run(row, task, T, solved):
        return {"row": row, "task": task, "T": T, "solved": solved, "paper": False}

    text = vanishing.literature_comparison([run("cornn", "adding", 50, False)])
    assert text.rstrip().splitlines()[-3] == "- none of these rows is finished yet."
    text = vanishing.literature_comparison([run("lstm-fb1", "adding", 50, True), run("lstm-fb1", "adding", 200, True),
                                            run("lstm-fb1", "adding", 500, False)])
    assert "LSTM solves adding to T≈400: lstm-fb1 on adding — longest T solved: 200 (tried T = 50, 200, 500)." in text
    assert "none of these rows" not in text
    # a short budget (the demo's 300 steps) is said to be too short to test the claim
    short = [dict(run("lstm-fb1", "adding", 50, False), steps=300)]
    text = vanishing.literature_comparison(short)
    assert ("LSTM solves adding to T≈400: lstm-fb1 on adding — solved at no T (tried T = 50); 300 steps is too "
            "short a budget to test this claim") in text


def test_every_spec_builds():
    x = jax.ShapeDtypeStruct((2, 2), jnp.float32)
    for spec in vanishing.specs():  # by shapes only (nothing compiled): every factory call is valid
        cell, project = vanishing.make_model(spec, 4, 10)
        try:
            params = jax.eval_shape(lambda k: cell.init(k, 2), jax.random.key(0))
        except jax.errors.TracerArrayConversionError:  # an initialiser that needs concrete values
            params = cell.init(jax.random.key(0), 2)
        _, y = jax.eval_shape(lambda p, x: cell.apply(p, cell.initial_carry(p, (2,)), x), params, x)
        assert y.shape[0] == 2 and y.dtype == jnp.float32, spec.name
        assert (project is not None) == spec.name.startswith("indrnn"), spec.name


def test_recipe_arguments_are_never_dropped(monkeypatch):
    def fake(hidden_size, *, dt=1.0):  # a coRNN factory without gamma and epsilon
        return rnnjax.elman(hidden_size)

    monkeypatch.setattr(rnnjax, "cornn", fake, raising=False)
    with pytest.raises(TypeError, match="gamma"):
        vanishing.make_model(vanishing.spec_by_name("cornn-paper"), 4, 10)
    with pytest.raises(ValueError, match="unknown row"):
        vanishing.spec_by_name("nope")


# ----------------------------------------------------------------------------- the recipes


def test_paper_rows_carry_their_papers_recipes():
    rows = vanishing.plan(vanishing.GRIDS["full"], cells=None, steps=None, hidden=None, lr=1e-2,
                          seeds=None, eval_every=None, test_size=None, paper_steps=None)
    paper = {(pl.spec.name, pl.task.T): pl.recipe for pl in rows if pl.spec.paper is not None}
    tasks = {(pl.spec.name, pl.task.T): pl.task.name for pl in rows}
    seeds = {(pl.spec.name, pl.task.T): pl.seeds for pl in rows if pl.spec.paper is not None}
    ind = paper[("indrnn-paper", 1000)]
    assert ("indrnn-paper", 5000) in paper
    assert (ind.hidden_size, ind.batch, ind.lr, ind.optimizer, ind.clip) == (128, 32, 2e-4, "adam", None)
    chrono = paper[("lstm-chrono-paper", 500)]
    assert tasks[("lstm-chrono-paper", 500)] == "copy"
    assert (chrono.hidden_size, chrono.optimizer, chrono.lr, dict(chrono.opt_kwargs)["decay"]) == \
        (128, "rmsprop", 1e-3, 0.9)
    assert dict(chrono.opt_kwargs)["eps_in_sqrt"] is False  # the paper's PyTorch RMSprop
    contrast = paper[("lstm-chrono-paper-eps-in-sqrt", 500)]  # the same but optax's RMSprop form
    assert (chrono.steps, contrast.steps) == (20000, 10000)  # the contrast kept its first budget
    assert dataclasses.replace(contrast, opt_kwargs=chrono.opt_kwargs, steps=chrono.steps) == chrono
    exp = paper[("exprnn-paper", 1000)]
    assert (exp.hidden_size, exp.batch, exp.lr, dict(exp.lr_factors), exp.clip) == (190, 128, 2e-4, {"a": 0.1}, None)
    assert dict(exp.opt_kwargs) == {"decay": 0.99, "eps_in_sqrt": False}
    contrast = paper[("exprnn-paper-eps-in-sqrt", 1000)]
    assert dataclasses.replace(contrast, opt_kwargs=exp.opt_kwargs) == exp
    irnn = paper[("irnn-paper", 150)]
    assert (irnn.hidden_size, irnn.optimizer, irnn.batch, irnn.lrs) == (100, "sgd", 16, (1e-2, 1e-3))
    assert all(len(s) >= 3 for s in seeds.values())
    grid = [pl for pl in rows if pl.spec.paper is None]
    assert all(pl.recipe.steps == 1000 and len(pl.seeds) >= 3 for pl in grid)
    assert all(dataclasses.replace(pl.recipe, init="") == bench.Recipe() for pl in grid)  # bench's default
    assert {pl.task.T for pl in grid if pl.task.name == "adding"} == {50, 100, 200, 500, 1000}
    # the chrono LSTM's T_max is 3T/2: b_f = log U[1, T_max - 1], b_i = -b_f
    task, recipe, _ = tiny(task="copy", T=20, H=16, optimizer="rmsprop", lr=1e-3, clip=None,
                           opt_kwargs=(("decay", 0.9),))
    init_fn = vanishing.build_training(vanishing.spec_by_name("lstm-chrono-paper"), task, recipe).init_fn
    state = init_fn({"lr": 1e-3, "seed": 0})
    b = np.asarray(state.params["cell"]["b"])
    H = 16
    assert b[H:2 * H].min() >= 0 and b[H:2 * H].max() <= math.log(1.5 * 20 - 1) + 1e-6
    assert b[H:2 * H].max() > math.log(20 - 1)  # beyond what chrono=T would allow
    np.testing.assert_array_equal(b[:H], -b[H:2 * H])
    hp = state.opt_state.hyperparams
    assert float(hp["decay"]) == pytest.approx(0.9) and math.isinf(float(hp["clip_norm"]))


def test_chrono_paper_rmsprop_is_pytorchs_form():
    """PyTorch's RMSprop takes nearly a full step whatever the gradient's size (first step: about
    lr / sqrt(1 - decay)); optax's form, eps inside the root, shrinks a 1e-6 gradient's step ~300-fold."""
    kw = dict(task="copy", T=5, H=4, optimizer="rmsprop", lr=1e-3, clip=None)
    steps = {}
    for row in ("lstm-chrono-paper", "lstm-chrono-paper-eps-in-sqrt"):
        rc = vanishing.spec_by_name(row).recipe
        t = vanishing.build_training(vanishing.spec_by_name(row), *tiny(opt_kwargs=rc.opt_kwargs, **kw)[:2])
        params = t.init_fn({"lr": 1e-3, "seed": 0}).params
        tx = t.make_tx({"lr": 1e-3})
        u, _ = tx.update(jax.tree.map(lambda p: jnp.full_like(p, 1e-6), params), tx.init(params), params)
        steps[row] = np.abs(np.asarray(u["cell"]["w_x"]))
    np.testing.assert_allclose(steps["lstm-chrono-paper"], 1e-3 * 1e-6 / (math.sqrt(0.1) * 1e-6 + 1e-8),
                               rtol=1e-4)
    np.testing.assert_allclose(steps["lstm-chrono-paper-eps-in-sqrt"],
                               1e-3 * 1e-6 / math.sqrt(0.1 * 1e-12 + 1e-8), rtol=1e-4)


def test_indrnn_paper_keeps_u_within_the_bound():
    T = 10
    bound = 2.0 ** (1.0 / T)
    cfg = tiny(T=T, H=8, lr=0.3, clip=None)[:2]  # a large rate: without the projection u would leave
    init_fn, step_fn, batch_fn = vanishing.build_training(vanishing.spec_by_name("indrnn-paper"), *cfg)[:3]
    config = {"lr": jnp.float32(0.3), "seed": jnp.int32(0)}
    state = init_fn(config)
    l1, l2 = state.params["cell"]
    assert np.all((np.asarray(l1["u"]) >= 0) & (np.asarray(l1["u"]) <= bound))
    assert np.all((np.asarray(l2["u"]) >= 1 / bound) & (np.asarray(l2["u"]) <= bound))
    assert np.abs(np.asarray(l1["w_x"])).max() < 0.006  # N(0, 0.001^2)
    step = jax.jit(lambda s, t: step_fn(s, batch_fn(config, t), config))
    for t in range(5):
        state, _ = step(state, jnp.int32(t))
    us = np.concatenate([np.abs(np.asarray(p["u"])) for p in state.params["cell"]])
    assert us.max() <= bound * (1 + 1e-6)
    assert np.isclose(us, bound, rtol=1e-6).any()  # the projection was active


def test_exprnn_paper_trains_the_skew_parameter_at_a_tenth_of_the_rate():
    spec = vanishing.spec_by_name("exprnn-paper")
    kw = dict(task="copy", T=3, H=4, optimizer="rmsprop", lr=2e-4, clip=None, opt_kwargs=(("decay", 0.99),))
    config = {"lr": 2e-4, "seed": 0}
    updates = []
    for factors in ((("a", 0.1),), ()):
        t = vanishing.build_training(spec, *tiny(lr_factors=factors, **kw)[:2])
        params = t.init_fn(config).params
        grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
        tx = t.make_tx(config)
        u, _ = tx.update(grads, tx.init(params), params)
        updates.append(jax.tree.map(np.asarray, u))
    np.testing.assert_allclose(updates[0]["cell"]["a"], 0.1 * updates[1]["cell"]["a"], rtol=1e-6)
    assert np.abs(updates[1]["cell"]["a"]).max() > 1e-4  # RMSprop's first step: about 2e-4 / sqrt(0.01)
    np.testing.assert_array_equal(updates[0]["cell"]["w_x"], updates[1]["cell"]["w_x"])
    np.testing.assert_array_equal(updates[0]["readout"]["w"], updates[1]["readout"]["w"])


# ----------------------------------------------------------------------------- end to end


def test_quick_path_end_to_end(tmp_path, monkeypatch, capsys):
    grid = dict(vanishing.GRIDS["quick"], adding=[10], steps=20, H=4, seeds=3, eval_every=10, test_size=8,
                train_specs=["elman-orth"], flow_specs=["elman-rho0.9"], flow_T=40, flow_H=8,
                trained_flow=True)
    monkeypatch.setitem(vanishing.GRIDS, "quick", grid)
    assert vanishing.main(["--quick", "--out", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "seeds solved" in shown and "solved: a seed's loss on held-out" in shown
    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)
    assert data["meta"]["command"] == f"python benchmarks/vanishing.py --quick --out {tmp_path}"
    assert "jax" in data["meta"]["versions"] and "cores" in data["meta"]["machine"]
    (run,) = data["runs"]
    rec = next(r for r in data["records"] if r["task"] == "adding")
    for k in ("task", "cell", "T", "seeds", "solved_seeds", "solved", "per_seed", "final_loss_median",
              "final_loss_iqr", "recipe"):
        assert k in rec, k
    assert rec["seeds"] == 3 and len(rec["per_seed"]) == 3 and run["eval_steps"] == [10, 20]
    finals = [p["final_test_loss"] for p in rec["per_seed"]]
    assert finals == [c[-1] for c in run["test_loss"]]
    assert rec["final_loss_median"] == pytest.approx(np.median(finals))
    assert rec["final_loss_iqr"] == pytest.approx(np.percentile(finals, [25, 75]).tolist())
    for p, curve in zip(rec["per_seed"], run["test_loss"]):
        assert p["steps_to_solve"] == vanishing.steps_to_solve([10, 20], curve, rec["baseline"] / 10)
    assert rec["solved"] == (2 * rec["solved_seeds"] >= 3)
    assert rec["recipe"]["hidden_size"] == 4 and rec["recipe"]["steps"] == 20
    # the engine's test loss equals training seed 1 alone in a Python loop, then evaluating
    task, recipe, _ = tiny(T=10, steps=20, H=4, batch=32)
    init_fn, step_fn, batch_fn, eval_fn = vanishing.build_training(vanishing.spec_by_name("elman-orth"), task,
                                                                   recipe)[:4]
    config = {"lr": jnp.float32(1e-2), "seed": jnp.int32(1)}
    state = init_fn(config)
    step = jax.jit(lambda s, t: step_fn(s, batch_fn(config, t), config))
    for t in range(20):
        state, _ = step(state, jnp.int32(t))
    assert float(eval_fn(state.params, config)["test_loss"]) == pytest.approx(finals[1], rel=1e-4)
    md = (tmp_path / "results.md").read_text()
    assert "| elman-orth | " in md and "**solved**" in md and "k/n" in md
    for png in ("gradient_flow.png", "curves_adding.png", "gradient_flow_trained.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    # the gradient flow at initialisation, in log space: dh_t/dh_{t-1} = diag(tanh') W_h with
    # |tanh'| <= 1 decays at least as fast as the spectral radius 0.9 per step
    (flow,) = data["flows"]
    lg = np.asarray(flow["log10_norms"], float)
    assert lg.shape == (40,) and np.all(np.isfinite(lg)) and flow["rate"] < 0.9 + 0.02
    assert flow["rate"] == pytest.approx(vanishing.decay_rate(log10_norms=lg))


def test_a_row_resumes_from_its_workdir(tmp_path):
    spec = vanishing.spec_by_name("elman-orth")
    first = vanishing.train_row(spec, *tiny(), workdir=str(tmp_path), trained_flow=False)
    again = vanishing.train_row(spec, *tiny(), workdir=str(tmp_path), trained_flow=False)
    assert again[0].get("resumed") and again[0]["test_loss"] == first[0]["test_loss"]
    # a killed run: the row's record is gone, the engine's checkpoints are there; a larger budget
    # continues from them and equals a run of that budget from scratch
    os.remove(tmp_path / "adding-T10-elman-orth" / "row.json")
    longer = vanishing.train_row(spec, *tiny(steps=40), workdir=str(tmp_path), trained_flow=False)
    fresh = vanishing.train_row(spec, *tiny(steps=40), trained_flow=False)
    assert not longer[0].get("resumed") and longer[0]["eval_steps"] == [10, 20, 30, 40]
    np.testing.assert_allclose(np.asarray(longer[0]["test_loss"], float),
                               np.asarray(fresh[0]["test_loss"], float), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(longer[0]["test_loss"], float)[:, :2],
                               np.asarray(first[0]["test_loss"], float), rtol=1e-6)


def test_finished_only_reports_a_study_in_progress(tmp_path, monkeypatch):
    grid = dict(vanishing.GRIDS["quick"], adding=[6], steps=10, H=4, seeds=2, eval_every=5, test_size=8,
                train_specs=["elman-orth", "irnn"], flow_specs=[], trained_flow=False)
    monkeypatch.setitem(vanishing.GRIDS, "quick", grid)
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    assert vanishing.main(["--quick", "--cells", "elman-orth", "--workdir", work, "--out",
                           str(tmp_path / "first")]) == 0
    trained = json.loads((tmp_path / "first" / "results.json").read_text())["runs"]
    assert vanishing.main(["--quick", "--workdir", work, "--out", out, "--finished-only"]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    (run,) = data["runs"]  # the finished row, read back; the other one is not trained
    assert run["row"] == "elman-orth" and run["test_loss"] == trained[0]["test_loss"]
    assert data["meta"]["pending"] == [{"row": "irnn", "task": "adding", "T": 6}]
    cont = f"python benchmarks/vanishing.py --quick --workdir {work} --out {out}"
    assert data["meta"]["continue_command"] == cont
    md = (tmp_path / "out" / "results.md").read_text()
    assert "1 of 2 training rows are finished" in md and cont in md and "- irnn: adding T=6" in md
    assert not os.path.exists(os.path.join(work, "adding-T6-irnn"))
    with pytest.raises(SystemExit):
        vanishing.main(["--quick", "--out", out, "--finished-only"])  # needs --workdir


def test_a_raised_budget_reports_the_shorter_row_then_continues_it(tmp_path, monkeypatch):
    grid = dict(vanishing.GRIDS["quick"], adding=[6], steps=10, H=4, seeds=2, eval_every=5, test_size=8,
                train_specs=["elman-orth"], flow_specs=[], trained_flow=False)
    monkeypatch.setitem(vanishing.GRIDS, "quick", grid)
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    assert vanishing.main(["--quick", "--workdir", work, "--out", str(tmp_path / "first")]) == 0
    short = json.loads((tmp_path / "first" / "results.json").read_text())["runs"][0]
    # the budget is raised to 20: the 10-step row is shown, marked, and listed as pending
    assert vanishing.main(["--quick", "--steps", "20", "--workdir", work, "--out", out,
                           "--finished-only"]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    (run,) = data["runs"]
    assert run["steps"] == 10 and run["budget_planned"] == 20 and run["test_loss"] == short["test_loss"]
    assert data["meta"]["pending"] == [{"row": "elman-orth", "task": "adding", "T": 6, "steps_done": 10,
                                        "steps": 20}]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "0 of 1 training rows are finished" in md
    assert "- elman-orth: adding T=6 (finished at 10 of 20 steps; shown below)" in md
    # a different configuration (not only the budget) is not shown
    assert vanishing.main(["--quick", "--steps", "20", "--hidden", "5", "--workdir", work, "--out", out,
                           "--finished-only"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"] == []
    # continuing extends the row from its checkpoints: its first evaluations are the short row's
    assert vanishing.main(["--quick", "--steps", "20", "--workdir", work, "--out", out]) == 0
    (longer,) = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert longer["steps"] == 20 and "budget_planned" not in longer and longer["eval_steps"] == [5, 10, 15, 20]
    np.testing.assert_allclose(np.asarray(longer["test_loss"], float)[:, :2],
                               np.asarray(short["test_loss"], float), rtol=1e-6)
    # the paper-claims table states such a budget as a budget so far
    paper = dict(_synthetic_run("indrnn-paper", "adding", 1000, [0.1, 0.2, 0.3], paper=True, steps=3000),
                 budget_planned=9000)
    claim = next(line for line in vanishing.claims_table([paper]) if line.startswith("| indrnn-paper"))
    assert "here 3000 steps so far (of 9000 planned; continuing)" in claim
    assert claim.endswith("| not reproduced at this budget (so far) |")
    # a contrast row (not the paper's recipe) never reads as a verdict on the claim
    lines = vanishing.claims_table([_synthetic_run(f"lstm-chrono-paper{vanishing.EPS_IN_SQRT}", "copy", 500,
                                                   f, paper=True) for f in ([0.04] * 3, [0.001] * 3)])
    rows = [line for line in lines if line.startswith("| lstm-chrono-paper-eps-in-sqrt")]
    assert rows[0].endswith("| contrast, not the paper's recipe: not solved |")
    assert rows[1].endswith("| contrast, not the paper's recipe: solved |")
    assert "as lstm-chrono-paper, but RMSprop with eps 1e-8 inside the root" in rows[0]


def test_a_row_that_sweeps_learning_rates_reports_each(tmp_path):
    spec = vanishing.spec_by_name("irnn-paper")
    runs = vanishing.train_row(spec, *tiny(T=6, steps=10, eval_every=5, optimizer="sgd", clip=10.0,
                                           lr=(1e-2, 1e-3), batch=2), trained_flow=False)
    assert [r["name"] for r in runs] == ["irnn-paper lr=0.01", "irnn-paper lr=0.001"]
    assert all(r["seeds"] == 3 and r["recipe"]["optimizer"] == "sgd" for r in runs)
    assert runs[0]["recipe"]["lr"] == 1e-2 and runs[1]["recipe"]["lr"] == 1e-3
    assert runs[0]["test_loss"] != runs[1]["test_loss"]


def _synthetic_run(row, task, T, finals, paper=False, steps=100):
    base = 1 / 6 if task == "adding" else 10 * math.log(8) / (T + 20)
    curves = [[base, f] for f in finals]
    per = [{"seed": i, "final_test_loss": f, "final_ratio": f / base,
            "steps_to_solve": vanishing.steps_to_solve([50, 100], c, base / 10), "nonfinite_steps": 0}
           for i, (f, c) in enumerate(zip(finals, curves))]
    k = sum(p["steps_to_solve"] is not None for p in per)
    return {"task": task, "cell": row, "name": row, "row": row, "init": "x", "T": T, "metric": "m",
            "baseline": base, "threshold": base / 10, "seeds": len(finals), "solved_seeds": k,
            "solved": 2 * k >= len(finals), "per_seed": per, "final_loss_median": float(np.median(finals)),
            "final_loss_iqr": np.percentile(finals, [25, 75]).tolist(),
            "ratio_median": float(np.median(finals)) / base,
            "steps_to_solve_median": vanishing.median_steps([p["steps_to_solve"] for p in per]),
            "diverged_seeds": 0, "recipe": {"hidden_size": 4, "optimizer": "adam", "lr": 0.01,
                                            "clip_norm": 1.0, "batch": 32},
            "paper": paper, "steps": steps, "seconds": 1.0, "eval_steps": [50, 100], "test_loss": curves,
            "train_loss_median": [[1, 0.2], [100, 0.1]], "trained_log10_flow": [-3.0, -2.0, None, 0.0]}


def test_tables_claims_and_replot(tmp_path):
    runs = [_synthetic_run("lstm-fb1", "adding", 50, [0.001, 0.002, 0.2]),
            _synthetic_run("elman-orth", "adding", 50, [0.2, 0.16, 0.01]),
            _synthetic_run("indrnn-paper", "adding", 1000, [0.1, 0.2, 0.3], paper=True, steps=3000)]
    meta = {"command": "test", "machine": "m", "versions": "v", "backend": "cpu", "H": 4, "seconds": 1.0}
    text = vanishing.write_outputs(str(tmp_path), [], runs, meta)
    assert "| lstm-fb1 | 2/3 ✓ · 100 · 0.012 |" in text  # median steps: seeds at 100, 100, never
    assert "| elman-orth | 1/3 · — · 0.960 |" in text
    claim = next(line for line in text.splitlines() if line.startswith("| indrnn-paper"))
    assert "2^(1/T)" in claim and "here 3000 steps; paper: order 10^4" in claim and "0/3 seeds solved" in claim
    assert claim.endswith("| not reproduced at this budget |")
    for png in ("curves_adding.png", "curves_paper.png", "gradient_flow_trained.png"):
        assert (tmp_path / png).exists()
    os.remove(tmp_path / "results.md")
    assert vanishing.main(["--replot", "--out", str(tmp_path)]) == 0
    assert "| lstm-fb1 | 2/3 ✓" in (tmp_path / "results.md").read_text()
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"meta": {}, "flows": [], "runs": [{"value": 1}]}))
    with pytest.raises(SystemExit):
        vanishing.main(["--replot", "--out", str(old)])


def test_bad_flags_are_refused():
    for argv in (["--steps", "0"], ["--seeds", "0"], ["--cells", "nope"], ["--lr", "-1"]):
        with pytest.raises(SystemExit):
            vanishing.main(argv)
