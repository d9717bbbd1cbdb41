"""The public API: optimize, Optimized, Report and @superopt.jit."""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

import superopt
import superopt._api as api
from superopt._search import MIN_PREDICTED_GAIN, Candidate, RewriteStep, SearchResult, trusted
from superopt._trace import ArgSpec
from superopt.ir import Program, make


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(tmp_path / "cache"))


def _normal(seed, *shape):
    return jax.random.normal(jax.random.key(seed), shape)


PROGRAMS = [
    ("mlp_layer", lambda x, w, b: jnp.tanh(x @ w + b[None, :]), (_normal(0, 8, 16), _normal(1, 16, 4), _normal(2, 4))),
    ("chain", lambda a, b, v: (a @ b) @ v, (_normal(3, 16, 16), _normal(4, 16, 16), _normal(5, 16, 2))),
    ("softmax", lambda x: jax.nn.softmax(x, axis=-1).sum(axis=0), (_normal(6, 5, 7),)),
    ("ints", lambda i, j: (i * 3 + j) % 5, (jnp.arange(6), jnp.ones(6, jnp.int32))),
]  # fmt: skip


@pytest.mark.parametrize("name,fn,args", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_optimize_returns_a_verified_equal_function(name, fn, args):
    opt = superopt.optimize(fn, *args)
    assert opt.report.verified
    assert opt.report.verdict is not None and opt.report.verdict["ok"]
    # "fallback" too: a search that cannot handle a program must still give a right answer.
    assert opt.report.status in ("optimized", "unchanged", "fallback")
    if opt.report.status == "optimized":
        assert opt.program is not None and opt.source.startswith("def ")
    else:  # nothing better, or a failure: the original function itself comes back
        assert opt.program is None and "returned the original function" in opt.source
    np.testing.assert_allclose(opt(*args), fn(*args), rtol=1e-4, atol=1e-4)
    # Not only on the example values: on fresh ones of the same shapes too.
    fresh = [a + 1 if a.dtype.kind == "f" else a for a in args]
    np.testing.assert_allclose(opt(*fresh), fn(*fresh), rtol=1e-4, atol=1e-4)


def test_pytrees_and_static_arguments():
    def fn(params, x, power):
        y = x @ params["w"] + params["b"][None, :]
        return {"out": y**power, "parts": (y.sum(), jnp.abs(y))}

    params = {"w": _normal(0, 4, 3), "b": _normal(1, 3)}
    x = _normal(2, 5, 4)
    opt = superopt.optimize(fn, params, x, 2, static_argnums=(2,))
    got, want = opt(params, x, 2), fn(params, x, 2)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(superopt.SignatureError, match="static argument 2"):
        opt(params, x, 3)


def test_a_jitted_functions_static_arguments_need_not_be_repeated():
    def layer(x, w, power, act):
        return getattr(jnp, act)(x @ w) ** power

    jitted = jax.jit(layer, static_argnames=("power", "act"))
    x, w = _normal(0, 5, 4), _normal(1, 4, 3)
    opt = superopt.optimize(jitted, x, w, 2, "tanh", cache=False)
    assert opt.report.status != "fallback"
    np.testing.assert_allclose(opt(x, w, 2, "tanh"), layer(x, w, 2, "tanh"), rtol=1e-5)
    with pytest.raises(superopt.SignatureError, match="static argument 3"):
        opt(x, w, 2, "sin")
    # `@superopt.jit` over it optimizes once per static value, as jax.jit compiles.
    wrapped = superopt.jit(jitted, cache=False)
    for act in ("tanh", "sin"):
        np.testing.assert_allclose(wrapped(x, w, 3, act), layer(x, w, 3, act), rtol=1e-5)
    np.testing.assert_allclose(wrapped(x, w, 3, act="tanh"), layer(x, w, 3, "tanh"), rtol=1e-5)
    assert len(wrapped.optimized) == 3


def test_mismatched_shapes_raise_signature_error():
    opt = superopt.optimize(lambda x, w: x @ w, jnp.ones((4, 3)), jnp.ones((3, 2)))
    with pytest.raises(superopt.SignatureError) as info:
        opt(jnp.ones((5, 3)), jnp.ones((3, 2)))
    message = str(info.value)
    assert "float32[5, 3]" in message and "float32[4, 3]" in message
    assert "superopt.optimize again" in message and "@superopt.jit" in message
    with pytest.raises(superopt.SignatureError, match="structure"):
        opt((jnp.ones((4, 3)),), jnp.ones((3, 2)))


def test_a_call_of_a_signature_jax_jit_knows_is_not_checked_again(monkeypatch):
    x, w = jnp.ones((4, 3)), jnp.ones((3, 2))
    opt = superopt.optimize(lambda x, w, s: jnp.tanh(x @ w) * s, x, w, 2.0, cache=False)
    want = jnp.tanh(x @ w) * 2.0
    checked = []
    full_check = ArgSpec.of
    monkeypatch.setattr(ArgSpec, "of", lambda leaf: checked.append(leaf) or full_check(leaf))
    np.testing.assert_allclose(opt(x, w, jnp.asarray(2.0)), want, rtol=1e-6)
    assert checked  # the first call traces, and the check runs then
    first = len(checked)
    for _ in range(3):
        np.testing.assert_allclose(opt(x, w, jnp.asarray(2.0)), want, rtol=1e-6)
    assert len(checked) == first
    # Anything new to jax.jit traces again, and the check raises.
    with pytest.raises(superopt.SignatureError, match=r"float32\[5, 3\]"):
        opt(jnp.ones((5, 3)), w, 2.0)
    with pytest.raises(superopt.SignatureError, match="weakly typed float32"):
        opt(x, w, jnp.float32(2.0))
    # An unchanged function is the original behind the same check.
    same = superopt.optimize(lambda x: jnp.sin(x), x, cache=False)
    assert same.report.status == "unchanged"
    np.testing.assert_allclose(same(x), jnp.sin(x), rtol=1e-6)
    with pytest.raises(superopt.SignatureError, match=r"float32\[5, 3\]"):
        same(jnp.ones((5, 3)))


def test_non_callable_raises_trace_error_naming_it():
    with pytest.raises(superopt.TraceError, match=r"got list \[1, 2\]"):
        superopt.optimize([1, 2], jnp.ones(3))


def test_arguments_that_cannot_be_traced_raise_trace_error():
    with pytest.raises(superopt.TraceError, match="tracing"):
        superopt.optimize(lambda x, w: x @ w, jnp.ones((4, 3)), jnp.ones((5, 2)))
    # A leaf that is not an array is held static (as eqx.filter_jit holds it); where the
    # function needed an array there, the error names it.
    with pytest.raises(superopt.TraceError, match=r"argument \[1\] \(str\).*static"):
        superopt.optimize(lambda x, s: x * s, jnp.ones(3), "text")
    opt = superopt.optimize(lambda x, s: x, jnp.ones(3), "text", cache=False)
    np.testing.assert_allclose(opt(jnp.ones(3), "text"), 1.0)
    with pytest.raises(superopt.SignatureError, match=r"argument \[1\] is str 'other'"):
        opt(jnp.ones(3), "other")


def test_opaque_scan_comes_back_correct_and_differentiable():
    def cumulative(x):
        def body(carry, row):
            carry = carry * 0.5 + row
            return carry, jnp.sin(carry)

        last, ys = jax.lax.scan(body, jnp.zeros(x.shape[1]), x)
        return last.sum() + ys.sum()

    x = _normal(0, 6, 3)
    opt = superopt.optimize(cumulative, x)
    assert opt.report.verified
    assert "opaque" in opt.report.ops_before
    np.testing.assert_allclose(opt(x), cumulative(x), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(opt)(x), jax.grad(cumulative)(x), rtol=1e-4)


def test_grad_vmap_and_jit_go_through():
    fn = lambda x, w: jnp.sum(jnp.tanh(x @ w))  # noqa: E731
    x, w = _normal(0, 4, 3), _normal(1, 3, 2)
    opt = superopt.optimize(fn, x, w)
    np.testing.assert_allclose(jax.grad(opt)(x, w), jax.grad(fn)(x, w), rtol=1e-5)
    xs = _normal(2, 7, 4, 3)
    np.testing.assert_allclose(
        jax.vmap(opt, in_axes=(0, None))(xs, w), jax.vmap(fn, in_axes=(0, None))(xs, w), rtol=1e-5
    )
    np.testing.assert_allclose(jax.jit(opt)(x, w), fn(x, w), rtol=1e-5)


def _wrong_search(program, **options):
    wrong = Program(program.inputs, tuple(make("neg", o) for o in program.outputs), program.consts)
    step = RewriteStep("bogus", "y", "-y")
    return SearchResult((Candidate(wrong, (step,), 1e-9, "wrong"),), {"nodes": 3.0})


def test_a_wrong_candidate_falls_back_to_a_correct_program(monkeypatch):
    monkeypatch.setattr(api, "search", _wrong_search)
    fn = lambda x: jnp.exp(x) * 2.0  # noqa: E731
    x = _normal(0, 5)
    opt = superopt.optimize(fn, x, cache=False)
    assert opt.report.status == "fallback"
    assert "failed verification" in opt.report.reason and "'wrong'" in opt.report.reason
    assert opt.report.candidate == "reference" and opt.report.verified
    assert opt.report.rewrites == ()
    np.testing.assert_allclose(opt(x), fn(x), rtol=1e-6)


def test_a_failing_search_falls_back(monkeypatch):
    def broken(program, **options):
        raise superopt.SearchError("e-graph exploded")

    monkeypatch.setattr(api, "search", broken)
    opt = superopt.optimize(lambda x: x + 1, jnp.ones(3), cache=False)
    assert opt.report.status == "fallback"
    assert "e-graph exploded" in opt.report.reason
    np.testing.assert_allclose(opt(jnp.ones(3)), 2.0)


def test_a_program_superopt_cannot_carry_returns_the_original(monkeypatch):
    def refuse(fn, *args, static_argnums=()):
        raise superopt.TraceError("equation `mystery` produces a token")

    monkeypatch.setattr(api, "trace", refuse)
    fn = lambda x: x * 3  # noqa: E731
    opt = superopt.optimize(fn, jnp.ones(2))
    assert opt.report.status == "fallback" and "mystery" in opt.report.reason
    assert opt.program is None
    np.testing.assert_allclose(opt(jnp.ones(2)), 3.0)
    with pytest.raises(superopt.SignatureError):
        opt(jnp.ones(3))


def _double_search(program, **options):
    # x * 2 -> x + x: equivalent, so it must win and be reported as a rewrite.
    (x,) = program.inputs
    out = make("add", x, x)
    step = RewriteStep("mul_two_to_add", "x * 2", "x + x")
    cand = Candidate(Program(program.inputs, (out,), {}), (step,), 1e-7, "x+x")
    return SearchResult((cand, Candidate(program)), {"nodes": 4.0, "time_s": 0.001})


@pytest.mark.parametrize("gain", [0.05, 0.3])
def test_untimed_a_rewrite_wins_only_by_a_clear_predicted_margin(monkeypatch, gain):
    # x * 2 -> x + x, predicted `gain` faster than the reference.
    def search_with_reference_time(program, **options):
        (rewrite, reference), stats = _double_search(program).candidates, {"nodes": 4.0}
        ref_s = 1e-4
        rewrite = dataclasses.replace(rewrite, predicted_s=ref_s * (1 - gain))
        reference = dataclasses.replace(reference, predicted_s=ref_s)
        return SearchResult((rewrite, reference), stats, "2 candidates")

    monkeypatch.setattr(api, "search", search_with_reference_time)
    fn = lambda x: x * 2.0  # noqa: E731
    x = _normal(0, 6)
    opt = superopt.optimize(fn, x, cache=False)
    assert opt.report.verified
    np.testing.assert_allclose(opt(x), fn(x), rtol=1e-6)
    if gain > MIN_PREDICTED_GAIN:
        assert opt.report.status == "optimized" and opt.report.candidate == "x+x"
        return
    assert opt.report.status == "unchanged" and opt.report.candidate == "reference"
    assert opt.program is None and opt.report.rewrites == ()
    assert "2 candidates" in opt.report.reason
    assert "(x+x) is predicted 5.0% faster than the original (95.0 us against 100.0 us)" in (
        opt.report.reason
    )
    # With a budget the hardware decides: the rewrite is timed, not dropped.
    timed = superopt.optimize(fn, x, budget=2, cache=False)
    assert [m["label"] for m in timed.report.measurements] == ["x+x"]


def test_trusted_keeps_what_it_cannot_compare():
    prog = superopt.trace(lambda x: x * 2.0, jnp.ones(3)).program
    unscored = [Candidate(prog, (), None, "variant0"), Candidate(prog, (), 1.0, "reference")]
    assert trusted(unscored) == (unscored, "")
    no_reference_time = [Candidate(prog, (), 0.99, "variant0"), Candidate(prog)]
    assert trusted(no_reference_time) == (no_reference_time, "")
    # A close second behind a clear winner is dropped without a note: the winner stands.
    ranked = [Candidate(prog, (), 0.5, "variant0"), Candidate(prog, (), 0.95, "variant1"),
              Candidate(prog, (), 1.0, "reference")]  # fmt: skip
    assert trusted(ranked) == ([ranked[0], ranked[2]], "")


def test_a_rewritten_candidate_wins_and_is_timed_with_a_budget(monkeypatch):
    monkeypatch.setattr(api, "search", _double_search)
    fn = lambda x: x * 2.0  # noqa: E731
    x = _normal(0, 64)
    opt = superopt.optimize(fn, x, cache=False)
    assert opt.report.status == "optimized"
    assert [(r.rule, r.before, r.after) for r in opt.report.rewrites] == [
        ("mul_two_to_add", "x * 2", "x + x")
    ]
    assert opt.report.speedup is None
    assert "add" in opt.source
    timed = superopt.optimize(fn, x, cache=False, budget=1)
    assert timed.report.reference_s is not None and timed.report.reference_s > 0
    assert [m["label"] for m in timed.report.measurements] == ["x+x"]
    if timed.report.status == "optimized":
        assert timed.report.speedup >= 1.0
    else:
        assert "faster than jax.jit" in timed.report.reason and "x+x" in timed.report.reason
    np.testing.assert_allclose(timed(x), fn(x), rtol=1e-6)


def test_report_json_round_trips_and_renders(monkeypatch):
    monkeypatch.setattr(api, "search", _double_search)
    opt = superopt.optimize(lambda x: x * 2.0, jnp.ones(8), cache=False)
    report = opt.report
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["status"] == "optimized" and data["rewrites"][0]["rule"] == "mul_two_to_add"
    assert superopt.Report.from_dict(data) == report
    buffer = io.StringIO()
    Console(file=buffer, width=100).print(report)
    assert "mul_two_to_add" in buffer.getvalue() and "<lambda>" in buffer.getvalue()
    assert "optimized" in str(report)


def test_the_cache_is_reused(tmp_path):
    fn = lambda x: jnp.cos(x) + 1  # noqa: E731
    first = superopt.optimize(fn, jnp.ones(4), cache_dir=str(tmp_path / "c"))
    second = superopt.optimize(fn, jnp.ones(4), cache_dir=str(tmp_path / "c"))
    assert not first.report.cached and second.report.cached
    np.testing.assert_allclose(second(jnp.ones(4)), fn(jnp.ones(4)), rtol=1e-6)


def test_a_corrupt_cache_gives_a_clear_cache_error(tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "superopt.sqlite").write_bytes(b"this is not a database" * 10)
    monkeypatch.setenv("SUPEROPT_CACHE_DIR", str(folder))
    with pytest.raises(superopt.CacheError, match="not superopt's tuning cache"):
        superopt.optimize(lambda x: x + 1, jnp.ones(3), cache=True)
    # Without the cache the same call works.
    superopt.optimize(lambda x: x + 1, jnp.ones(3), cache=False)


def test_jit_optimizes_per_signature(monkeypatch):
    calls = []
    real = api.optimize

    def counting(fn, *args, **options):
        calls.append(tuple(jnp.shape(a) for a in args))
        return real(fn, *args, **options)

    monkeypatch.setattr(superopt._jit, "optimize", counting)

    @superopt.jit
    def f(x, w):
        return jnp.tanh(x @ w)

    w = jnp.ones((3, 2))
    np.testing.assert_allclose(f(jnp.ones((4, 3)), w), jnp.tanh(jnp.full((4, 2), 3.0)))
    f(jnp.zeros((4, 3)), w)
    assert len(calls) == 1
    f(jnp.ones((6, 3)), w)
    assert len(calls) == 2 and len(f.optimized) == 2
    f(jnp.ones((6, 3)), w)
    assert len(calls) == 2


def test_jit_with_options_static_args_and_transforms():
    @superopt.jit(static_argnums=(1,), cache=False)
    def g(x, n):
        return jnp.sin(x) * n

    x = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(g(x, 2), jnp.sin(x) * 2, rtol=1e-6)
    np.testing.assert_allclose(g(x, 3), jnp.sin(x) * 3, rtol=1e-6)
    assert len(g.optimized) == 2
    np.testing.assert_allclose(jax.grad(lambda x: g(x, 2).sum())(x), 2 * jnp.cos(x), rtol=1e-5)
    np.testing.assert_allclose(
        jax.vmap(lambda r: g(r, 2))(jnp.stack([x, x + 1])), jnp.sin(jnp.stack([x, x + 1])) * 2,
        rtol=1e-5,
    )  # fmt: skip
    with pytest.raises(superopt.SignatureError, match="not hashable"):
        g(x, [1])


def test_the_real_search_reorders_a_matmul_chain():
    a, b, v = _normal(0, 64, 64), _normal(1, 64, 64), _normal(2, 64, 2)
    opt = superopt.optimize(lambda a, b, v: (a @ b) @ v, a, b, v, cost_model="flops", cache=False)
    assert opt.report.status == "optimized", opt.report.reason
    assert opt.report.rewrites and opt.report.verified
    np.testing.assert_allclose(opt(a, b, v), (a @ b) @ v, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- budgets and the cache


def _four_search(program, **options):
    """Candidates of `x * 2` best first: two share a rewrite choice, one is wrong."""
    (x,) = program.inputs
    twice = make("add", x, x)
    progs = [
        ("a", twice, ("r1",)),
        ("bad", make("neg", twice), ("r3",)),
        ("c", make("add", twice, make("sub", x, x)), ("r2",)),
        ("b", make("sub", make("add", twice, x), x), ("r1",)),
    ]
    cands = tuple(
        Candidate(Program(program.inputs, (out,), {}),
                  tuple(RewriteStep(r, "x * 2", label) for r in rules), 1e-7 * (i + 1), label)
        for i, (label, out, rules) in enumerate(progs)
    )  # fmt: skip
    return SearchResult((*cands, Candidate(program)), {"nodes": 9.0})


class _FakeTimer:
    """Stands in for `time_callables`: `jax.jit` takes 1 ms, candidates `times` in order."""

    def __init__(self, times):
        self.times = list(times)
        self.calls = []

    def __call__(self, fns, args, **kwargs):
        names = list(fns)
        self.calls.append(names)
        assert names[0] == "jax.jit"
        out = {"jax.jit": superopt.Timing(1e-3, 1e-3, 1e-3, 1e-3, 5, 0.0)}
        for name in names[1:]:
            t = self.times.pop(0)
            out[name] = superopt.Timing(t, t, t, t, 5, 0.0)
        return out


def test_budget_times_at_most_n_verified_diverse_candidates(monkeypatch):
    timer = _FakeTimer([2e-3, 0.5e-3])
    monkeypatch.setattr(api, "search", _four_search)
    monkeypatch.setattr(superopt._measure, "time_callables", timer)
    x = _normal(0, 16)
    opt = superopt.optimize(lambda x: x * 2.0, x, budget=2)
    report = opt.report
    # "bad" fails verification and is replaced; "b" repeats a's rewrite choice, so waits.
    assert [m["label"] for m in report.measurements] == ["a", "c"]
    assert len(timer.calls) == 1 and len(timer.calls[0]) == 3  # one interleaved run
    assert report.status == "optimized" and report.candidate == "c"
    assert report.speedup == pytest.approx(2.0) and report.reference_s == pytest.approx(1e-3)
    assert "'bad' failed verification" in report.reason
    assert not any(m["reused"] for m in report.measurements)
    np.testing.assert_allclose(opt(x), x * 2.0, rtol=1e-6)
    assert "timed candidates" in str(report) and "* c" in str(report)

    # A bigger budget is another cache entry, but the timings already taken are reused.
    timer.times = [0.9e-3]
    more = superopt.optimize(lambda x: x * 2.0, x, budget=3)
    assert len(timer.calls) == 2 and len(timer.calls[1]) == 2  # only "b" timed again
    reused = {m["label"]: m["reused"] for m in more.report.measurements}
    assert reused == {"a": True, "c": True, "b": False}
    assert more.report.candidate == "c"


def test_budget_keeps_the_original_function_when_every_candidate_is_slower(monkeypatch):
    monkeypatch.setattr(api, "search", _four_search)
    monkeypatch.setattr(superopt._measure, "time_callables", _FakeTimer([2e-3, 3e-3]))
    x = _normal(0, 16)
    opt = superopt.optimize(lambda x: x * 2.0, x, budget=2, cache=False)
    report = opt.report
    assert report.candidate == "reference" and report.speedup is None
    assert "None of the 2 timed candidate(s) was faster than jax.jit" in report.reason
    assert report.reason.endswith("so the original function is kept.")
    assert opt.program is None and "returned the original function" in opt.source
    assert "a 0.50x" in report.reason and report.reference_s == pytest.approx(1e-3)
    np.testing.assert_allclose(opt(x), x * 2.0, rtol=1e-6)


def test_an_unchanged_function_is_the_original_with_its_own_derivatives(tmp_path):
    # relu's custom_jvp makes its gradient 0 at 0; the traced and round-tripped program
    # (max(x, 0)) has 0.5 there. Nothing beats the traced program, so the original comes
    # back, from a search and from the cache alike.
    fn = lambda x: jax.nn.relu(x).sum()  # noqa: E731
    x = jnp.array([-1.0, 0.0, 2.0])
    folder = str(tmp_path / "c")
    for cached in (False, True):
        opt = superopt.optimize(fn, x, cost_model="flops", cache_dir=folder)
        assert opt.report.cached == cached and opt.report.status == "unchanged"
        assert opt.program is None and "returned the original function" in opt.source
        np.testing.assert_array_equal(jax.grad(opt)(x), [0.0, 0.0, 1.0])
        assert float(opt(x)) == 2.0
        with pytest.raises(superopt.SignatureError):
            opt(jnp.ones(4))


def test_a_rewritten_program_keeps_custom_differentiation_rules(tmp_path):
    # A straight-through estimator: round forward, identity backward. The matrix chain is
    # rewritten; the estimator's gradient survives, from a search and from the cache alike.
    @jax.custom_vjp
    def ste(x):
        return jnp.round(x)

    ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))

    def loss(a, b, v, x):
        return ((a @ b) @ v).sum() + (ste(x) * x).sum()

    args = (_normal(0, 64, 64), _normal(1, 64, 64), _normal(2, 64, 4), _normal(3, 9))
    expected = jax.grad(loss, argnums=(0, 3))(*args)
    assert not np.allclose(expected[1], jnp.round(args[3]))  # what the primal alone gives
    folder = str(tmp_path / "c")
    for cached in (False, True):
        opt = superopt.optimize(loss, *args, cost_model="flops", cache_dir=folder)
        assert opt.report.status == "optimized" and opt.report.cached == cached
        assert any("dot_assoc" in step.rule for step in opt.report.rewrites)
        got = jax.grad(opt, argnums=(0, 3))(*args)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-5)


def test_budget_zero_times_nothing(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("budget=0 must not time anything")

    monkeypatch.setattr(api, "search", _four_search)
    monkeypatch.setattr(superopt._measure, "time_callables", no_timing)
    opt = superopt.optimize(lambda x: x * 2.0, _normal(0, 16), budget=0, cache=False)
    assert opt.report.candidate == "a" and opt.report.measurements == ()


@pytest.mark.parametrize("bad", [0.5, -1, "4", True])
def test_a_budget_that_is_not_a_count_is_refused(bad):
    with pytest.raises(ValueError, match="number of candidates"):
        superopt.optimize(lambda x: x + 1, jnp.ones(3), budget=bad)


def test_a_second_call_is_fast_and_rebuilds_the_same_winner(tmp_path):
    import time

    fn = lambda a, b, v: jnp.tanh((a @ b) @ v)  # noqa: E731
    args = (_normal(0, 32, 32), _normal(1, 32, 32), _normal(2, 32, 2))
    folder = str(tmp_path / "c")
    first = superopt.optimize(fn, *args, cost_model="flops", cache_dir=folder)
    assert not first.report.cached and first.report.status == "optimized"
    times, again = [], None
    for _ in range(2):  # the faster of two, against a busy machine
        start = time.perf_counter()
        again = superopt.optimize(fn, *args, cost_model="flops", cache_dir=folder)
        times.append(time.perf_counter() - start)
        assert again.report.cached
    assert min(times) < 0.2, times
    assert "search" not in again.report.phase_s and "cache" in again.report.phase_s
    assert again.source == first.source
    assert again.program.canonical_key() == first.program.canonical_key()
    assert again.report.rewrites == first.report.rewrites
    assert again.report.verified and again.report.verdict == first.report.verdict
    np.testing.assert_allclose(again(*args), first(*args), rtol=1e-6)
    # Other options are another entry.
    other = superopt.optimize(fn, *args, cost_model="flops", cache_dir=folder, node_limit=999)
    assert not other.report.cached


def test_a_cached_winner_keeps_its_dot_precision(tmp_path):
    def fn(a, b, v):
        return jnp.matmul(jnp.matmul(a, b, precision="highest"), v, precision="highest")

    args = (_normal(0, 32, 32), _normal(1, 32, 32), _normal(2, 32, 2))
    folder = str(tmp_path / "c")
    first = superopt.optimize(fn, *args, cost_model="flops", cache=True, cache_dir=folder)
    again = superopt.optimize(fn, *args, cost_model="flops", cache=True, cache_dir=folder)
    assert first.report.status == "optimized" and not first.report.cached
    assert again.report.cached and again.program.canonical_key() == first.program.canonical_key()
    assert str(jax.make_jaxpr(again)(*args)).count("HIGHEST") == 4  # two dots, two operands
    np.testing.assert_array_equal(again(*args), first(*args))
    np.testing.assert_allclose(again(*args), fn(*args), rtol=1e-5, atol=1e-5)


def test_retrained_weights_search_again_instead_of_reusing_the_cache(tmp_path, monkeypatch):
    import json
    import shutil

    from superopt import _predict

    weights = tmp_path / "weights"
    shutil.copytree(_predict.default_weights(), weights)
    monkeypatch.setattr(_predict, "default_weights", lambda: weights)
    fn = lambda a, b, v: (a @ b) @ v  # noqa: E731
    args = (_normal(0, 32, 32), _normal(1, 32, 32), _normal(2, 32, 2))
    folder = str(tmp_path / "c")

    def run():
        return superopt.optimize(fn, *args, cost_model="analytical", cache_dir=folder)

    first = run()
    assert not first.report.cached and run().report.cached
    # Weights rewritten in place, as `superopt train` does (indented: another size).
    fitted = json.loads((weights / "analytical.json").read_text())
    fitted["coef"] = [2 * c for c in fitted["coef"]]
    (weights / "analytical.json").write_text(json.dumps(fitted, indent=1))
    again = run()
    assert not again.report.cached
    assert again.report.predicted_s == pytest.approx(2 * first.report.predicted_s, rel=1e-3)
    assert run().report.cached


def test_a_program_with_an_opaque_scan_is_rebuilt_from_the_cache(tmp_path):
    def cumulative(x, w):
        last, ys = jax.lax.scan(lambda c, r: (c * 0.5 + r, jnp.sin(c)), jnp.zeros(3), x)
        return (last @ w).sum() + ys.sum()

    args = (_normal(0, 6, 3), _normal(1, 3, 2))
    folder = str(tmp_path / "c")
    first = superopt.optimize(cumulative, *args, cache_dir=folder)
    second = superopt.optimize(cumulative, *args, cache_dir=folder)
    assert second.report.cached and "opaque" in second.report.ops_before
    np.testing.assert_allclose(second(*args), cumulative(*args), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(second)(*args), jax.grad(first)(*args), rtol=1e-5)


def test_report_names_the_fallback_when_learned_weights_are_missing(tmp_path, monkeypatch):
    from superopt import _predict

    monkeypatch.setattr(_predict, "default_weights", lambda: tmp_path / "no-weights")
    _predict._learned.cache_clear()
    x = jnp.ones((4, 4))
    opt = superopt.optimize(lambda a: (a @ a) @ a[:, :1], x, cache=False)
    assert opt.report.cost_model.startswith("analytical (learned model unavailable")
    np.testing.assert_allclose(opt(x), (x @ x) @ x[:, :1], rtol=1e-5)


def test_report_names_a_corrupt_analytical_fit(tmp_path, monkeypatch):
    import shutil

    from superopt import _predict

    weights = tmp_path / "weights"
    shutil.copytree(_predict.default_weights(), weights)
    (weights / "analytical.json").write_text('{"coef": "nope"}')
    monkeypatch.setattr(_predict, "default_weights", lambda: weights)
    x = jnp.ones((4, 4))
    opt = superopt.optimize(lambda a: (a @ a) @ a[:, :1], x, cost_model="analytical", cache=False)
    assert opt.report.cost_model.startswith("analytical (")
    assert "analytical.json is not a readable analytical cost model" in opt.report.cost_model
    assert "without its fit" in opt.report.cost_model
    np.testing.assert_allclose(opt(x), (x @ x) @ x[:, :1], rtol=1e-5)


def test_a_python_scalar_and_a_typed_one_are_different_signatures():
    # `2 * int8` is int8 but `int32(2) * int8` is int32: a program traced with a Python
    # scalar must not run for a typed one (it would wrap around in int8).
    a = jnp.arange(-32, 32, dtype=jnp.int8).reshape(8, 8)

    def f(s, a, b):
        return (s * a) @ b

    opt = superopt.optimize(f, 2, a, a, cache=False)
    assert opt(3, a, a).dtype == jnp.int8
    with pytest.raises(superopt.SignatureError, match="weakly typed int32"):
        opt(jnp.int32(100), a, a)
    jitted = superopt.jit(f, cache=False)
    weak, typed = jitted(100, a, a), jitted(jnp.int32(100), a, a)
    assert len(jitted.optimized) == 2
    assert weak.dtype == f(100, a, a).dtype == jnp.int8
    assert typed.dtype == jnp.int32 and (typed == f(jnp.int32(100), a, a)).all()
    # Under an enclosing jit the scalar arrives as a weakly typed tracer and stays one.
    np.testing.assert_array_equal(jax.jit(lambda s: jitted(s, a, a))(3), f(3, a, a))


def test_wrapping_copies_names_but_not_the_wrapped_objects_state():
    a, v = _normal(0, 16, 16), _normal(1, 16, 2)
    first = superopt.optimize(lambda a, v: (a @ a) @ v, a, v, cache=False)
    again = superopt.optimize(first, a, v, budget=1, cache=False)
    assert again.report is not first.report and len(again.report.measurements) == 1
    inner = superopt.jit(lambda a, v: (a @ a) @ v, cache=False)
    outer = superopt.jit(inner, budget=2)
    assert outer._options["budget"] == 2 and outer.optimized is not inner.optimized

    class Layer:
        def __init__(self):
            self._call, self.w = "state of the user's own", _normal(2, 16, 16)

        def __call__(self, x):
            return (x @ self.w) @ self.w

    layer = Layer()
    np.testing.assert_allclose(superopt.optimize(layer, a, cache=False)(a), layer(a), rtol=1e-4)


def test_misspelt_options_and_bad_static_argnums_are_errors_not_fallbacks():
    a, v = _normal(0, 16, 16), _normal(1, 16, 2)

    def f(a, v):
        return (a @ a) @ v

    with pytest.raises(ValueError, match="unknown cost_model 'analytic'"):
        superopt.optimize(f, a, v, cost_model="analytic")
    with pytest.raises(TypeError, match="cost_model 3"):
        superopt.optimize(f, a, v, cost_model=3)
    with pytest.raises(ValueError, match="unknown rule or rule family 'dot_asoc'"):
        superopt.optimize(f, a, v, rules=["dot_asoc"])
    with pytest.raises(superopt.TraceError, match="static_argnums 5 is out of range"):
        superopt.optimize(f, a, v, static_argnums=5)
    # Negative positions count from the end, as in jax.jit.
    opt = superopt.optimize(lambda x, n: x * n, v, 2, static_argnums=-1, cache=False)
    assert opt.report.status != "fallback", opt.report.reason
    np.testing.assert_allclose(opt(v, 2), v * 2)
    jitted = superopt.jit(lambda x, n: x * n, static_argnums=-1, cache=False)
    np.testing.assert_allclose(jitted(v, 3), v * 3)


def test_a_function_with_side_effects_comes_back_as_it_is(capsys, tmp_path):
    # A rewrite of `(a @ b) @ v` would drop the print: the function is handed back whole.
    def chain(a, b, v):
        y = (a @ b) @ v
        jax.debug.print("norm {n}", n=jnp.linalg.norm(y))
        return y

    args = (jnp.ones((64, 64)), jnp.ones((64, 64)), jnp.ones((64, 2)))
    assert superopt.trace(chain, *args).effects == ("debug_print",)
    opt = superopt.optimize(chain, *args, cache_dir=tmp_path)
    assert opt.report.status == "unchanged" and "debug_print" in opt.report.reason
    capsys.readouterr()
    np.testing.assert_allclose(opt(*args), chain(*args))
    jax.effects_barrier()
    assert capsys.readouterr().out.count("norm 46340.9") == 2  # the print ran in both
    assert superopt.trace(lambda a: a * 2, args[0]).effects == ()
