"""tl_course.text: fine-tuning, splits, the sentence table and panel, against references.

Each expected value is computed here from the documented contract with plain torch / numpy:
a bare Adam loop for fine-tuning (cross-entropy + head_l2 ||w||^2 + l2sp / 2 ||E - E0||^2),
the greedy fill of test then validation for splits, a seeded draw for k per class.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import tl_course.text as text_pkg
import tl_course.train
from tl_course.text import finetune as ft
from tl_course.text import probes, sentences, splits

CPU = torch.device("cpu")


def _toy(n=40, d=4, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, d)) + 1.2 * (2 * y[:, None] - 1) * np.eye(d)[0]
    return x, y


def _bacc(y_true, y_pred):
    """Balanced accuracy: the mean over the true classes of the share predicted right."""
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def _reference(table, train, labels, weight, bias, mean, scale, *, lr, steps, head_l2=0.0,
               l2sp=0.0, weight_decay=0.0):
    """Full-batch training written out: rows E and head (w, b) by Adam (AdamW when
    weight_decay > 0) on CE(logits (0, z)) + head_l2 ||w||^2 + l2sp / 2 ||E - E0||^2."""
    e0 = torch.tensor(np.asarray(table), dtype=torch.float32)
    e = e0.clone().requires_grad_()
    w = torch.tensor(np.asarray(weight), dtype=torch.float32).reshape(1, -1).requires_grad_()
    b = torch.tensor([float(bias)], dtype=torch.float32).requires_grad_()
    mu = torch.tensor(np.asarray(mean), dtype=torch.float32)
    s = torch.tensor(np.asarray(scale), dtype=torch.float32)
    idx = torch.as_tensor(np.asarray(train), dtype=torch.long)
    t = torch.as_tensor(np.asarray(labels)[train], dtype=torch.long)
    opt = (torch.optim.AdamW([e, w, b], lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam([e, w, b], lr=lr))
    losses, accs = [], []
    for _ in range(steps):
        opt.zero_grad()
        z = F.linear((F.embedding(idx, e) - mu) / s, w, b)
        logits = torch.cat([torch.zeros_like(z), z], dim=1)
        loss = F.cross_entropy(logits, t) + head_l2 * w.pow(2).sum()
        if l2sp:
            loss = loss + 0.5 * l2sp * (e - e0).pow(2).sum()
        losses.append(float(loss.detach()))
        accs.append(float((logits.argmax(1) == t).float().mean()))
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (F.linear((e - mu) / s, w, b)[:, 0] > 0).long().numpy()
    return e.detach(), w.detach(), b.detach(), pred, losses, accs


def _bf16_autocast(device, enabled=True):
    """Mixed precision that the CPU can run: stands in for CUDA's autocast."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------- finetune


def test_finetune_at_its_defaults_is_plain_full_precision_adam_with_a_quiet_history(
        monkeypatch, capsys):
    """Defaults: no head penalty, no L2-SP, Adam at the given lr, one full batch per step,
    full precision even where mixed precision is on offer, no progress bar; the History
    holds the step's loss and accuracy per step (and nothing named otherwise)."""
    monkeypatch.setattr(tl_course.train, "autocast", _bf16_autocast)
    x, y = _toy(n=20, d=3, seed=4)
    rng = np.random.default_rng(1)
    weight, bias = rng.standard_normal(3), 0.2
    mean, scale = x.mean(0), x.std(0) + 0.5
    tr = np.array([0, 2, 3, 5, 7, 8, 11, 13, 14, 17])
    model = ft.WordClassifier(x, mean, scale, weight, bias)
    hist = ft.finetune(model, tr, y, lr=0.05, steps=6, device=CPU)
    e, w, b, _, losses, accs = _reference(x, tr, y, weight, bias, mean, scale, lr=0.05, steps=6)
    torch.testing.assert_close(model.embedding.weight.detach(), e)
    torch.testing.assert_close(model.head.weight.detach(), w)
    torch.testing.assert_close(model.head.bias.detach(), b)
    assert set(hist.metrics) == {"train_loss", "train_acc", "lr", "seconds"}
    assert hist["train_acc"] == pytest.approx(accs, abs=1e-6)
    assert hist["train_loss"] == pytest.approx(losses, rel=1e-5)
    assert 0 < min(accs) < 1 or 0 < max(accs) < 1  # accuracy is not trivially 0 or 1
    assert capsys.readouterr().err == ""  # no progress bar


def test_finetune_with_weight_decay_is_adamw_at_the_given_lr_and_decay():
    """weight_decay > 0: AdamW with that decay and the given lr (not torch's defaults);
    head_l2 and l2sp enter the loss as documented."""
    x, y = _toy(n=20, d=3, seed=5)
    rng = np.random.default_rng(2)
    weight, bias = rng.standard_normal(3), -0.1
    mean, scale = x.mean(0), x.std(0)
    tr = np.arange(0, 20, 2)
    model = ft.WordClassifier(x, mean, scale, weight, bias)
    ft.finetune(model, tr, y, lr=0.04, steps=5, device=CPU, head_l2=0.1, l2sp=0.5,
                weight_decay=0.3)
    e, w, b, *_ = _reference(x, tr, y, weight, bias, mean, scale, lr=0.04, steps=5,
                             head_l2=0.1, l2sp=0.5, weight_decay=0.3)
    torch.testing.assert_close(model.embedding.weight.detach(), e)
    torch.testing.assert_close(model.head.weight.detach(), w)
    torch.testing.assert_close(model.head.bias.detach(), b)


def test_finetune_accepts_any_integer_index_and_label_arrays():
    """int16 indices and int32 labels (numpy's default int on Windows) train exactly like
    int64 ones: the embedding and cross-entropy get long tensors."""
    x, y = _toy(n=16, d=3, seed=6)
    mean, scale, weight = x.mean(0), x.std(0), np.ones(3)
    tr = np.arange(0, 16, 2)
    a = ft.WordClassifier(x, mean, scale, weight, 0.0)
    b = ft.WordClassifier(x, mean, scale, weight, 0.0)
    ft.finetune(a, tr, y, lr=0.05, steps=3, device=CPU)
    ft.finetune(b, tr.astype(np.int16), y.astype(np.int32), lr=0.05, steps=3, device=CPU)
    assert torch.equal(a.embedding.weight, b.embedding.weight)
    assert torch.equal(a.head.weight, b.head.weight)


def test_row_norm_ratio_and_shift_are_per_row_lengths():
    """Rows far shorter than 1 too: ratio = |row now| / |row before|, shift = |now - before|."""
    rng = np.random.default_rng(3)
    table = 1e-3 * rng.standard_normal((5, 3))
    model = ft.WordClassifier(table, np.zeros(3), np.ones(3), np.ones(3), 0.0)
    now = table * np.array([0.5, 2.0, 1.0, 0.25, 3.0])[:, None]
    with torch.no_grad():
        model.embedding.weight.copy_(torch.as_tensor(now))
    want_ratio = np.linalg.norm(now, axis=1) / np.linalg.norm(table, axis=1)
    np.testing.assert_allclose(model.row_norm_ratio().numpy(), want_ratio, rtol=1e-5)
    np.testing.assert_allclose(model.row_shift().numpy(), np.linalg.norm(now - table, axis=1),
                               rtol=1e-4)


def _three_step_probe(x, y):
    """A probe whose classifier is the pipeline's last step, not its second."""
    return make_pipeline(StandardScaler(), "passthrough", LogisticRegression()).fit(x, y)


def test_classifier_reads_the_last_step_of_the_probe_pipeline():
    x, y = _toy(n=30, d=3, seed=7)
    probe = _three_step_probe(x, y)
    model = ft.WordClassifier.from_probe(x, probe)
    with torch.no_grad():
        z = model(torch.arange(len(x)))[:, 1].numpy()
    np.testing.assert_allclose(z, probe.decision_function(x), atol=1e-4)


def test_predict_all_puts_the_indices_on_the_given_device():
    """Under another default device (here 'meta'), predict_all still indexes on `device`."""
    x, y = _toy(n=12, d=3, seed=8)
    model = ft.WordClassifier(x, x.mean(0), x.std(0), np.array([1.0, -0.5, 0.2]), 0.1)
    want = (((x - x.mean(0)) / x.std(0)) @ np.array([1.0, -0.5, 0.2]) + 0.1 > 0).astype(int)
    with torch.device("meta"):
        got = ft.predict_all(model, CPU)
    assert got.tolist() == want.tolist()


def _episode_data():
    x, y = _toy(n=36, d=3, seed=9)
    return x, y, np.arange(0, 10), np.arange(10, 22), np.arange(22, 36)


def test_finetune_episode_at_its_defaults_matches_reference_runs():
    """Defaults: lrs 1e-3 and 1e-2, 200 steps, L2-SP and AdamW (decay 1e-2) at lr 1e-2, the
    head penalty 1 / (2 C n) of the probe; each run's scores and row shifts as documented."""
    x, y, tr, va, te = _episode_data()
    # A weak L2-SP: 200 steps do not reach its optimum, so its learning rate shows.
    ep = ft.finetune_episode(x, y, tr, va, te, CPU, l2sp=0.002, weight_decay_lr=1e-2)
    after_default = torch.rand(4)
    probe = probes.vector_probe(x, y, tr, va, te)
    scaler, logreg = probe.model[0], probe.model[-1]
    head_l2 = 1 / (2 * probe.c * len(tr))
    configs = {"lr 0.001": dict(lr=1e-3), "lr 0.01": dict(lr=1e-2),
               "L2-SP": dict(lr=1e-2, l2sp=0.002), "AdamW": dict(lr=1e-2, weight_decay=1e-2)}
    assert list(ep.runs) == list(configs)
    seen = np.isin(np.arange(len(x)), tr)
    for name, kw in configs.items():
        e, _, _, pred, _, _ = _reference(x, tr, y, logreg.coef_[0], logreg.intercept_[0],
                                         scaler.mean_, scaler.scale_, steps=200,
                                         head_l2=head_l2, **kw)
        e0 = torch.tensor(x, dtype=torch.float32)
        shift = (e - e0).norm(dim=1).numpy()
        ratio = (e.norm(dim=1) / e0.norm(dim=1)).numpy()
        run = ep.runs[name]
        assert run.test == _bacc(y[te], pred[te]) and run.val == _bacc(y[va], pred[va]), name
        assert run.seen_shift == pytest.approx(shift[seen].mean(), rel=1e-4), name
        assert run.unseen_shift == pytest.approx(shift[~seen].max(), rel=1e-4, abs=1e-7), name
        assert run.unseen_shift_min == pytest.approx(shift[~seen].min(), rel=1e-4, abs=1e-7)
        assert run.unseen_norm_ratio_max == pytest.approx(ratio[~seen].max(), rel=1e-5)
    assert ep.runs["L2-SP"].seen_shift < ep.runs["lr 0.01"].seen_shift
    # torch is reseeded from `seed` (default 0): what follows is reproducible.
    small = dict(lrs=(1e-2,), steps=1, l2sp=0.002, weight_decay_lr=1e-2)
    torch.manual_seed(123)
    ft.finetune_episode(x, y, tr, va, te, CPU, seed=0, **small)
    assert torch.equal(torch.rand(4), after_default)
    ft.finetune_episode(x, y, tr, va, te, CPU, seed=1, **small)
    assert not torch.equal(torch.rand(4), after_default)


def test_finetune_episode_chooses_a_run_that_beats_the_probe_on_validation(monkeypatch):
    """A probe with its head flipped is wrong on validation; fine-tuning repairs it, and the
    best learning rate on validation is chosen (ties: the smaller), its test score reported.
    Every prediction is made on the episode's device."""
    x, y, tr, va, te = _episode_data()
    real_probe, real_predict = ft.vector_probe, ft.predict_all

    def flipped(table, labels, train, val, test, cs):
        res = real_probe(table, labels, train, val, test, cs)
        res.model[-1].coef_ *= -1
        res.model[-1].intercept_ *= -1
        res.val = _bacc(labels[val], res.model.predict(table[val]))
        res.test = _bacc(labels[test], res.model.predict(table[test]))
        return res

    devices = []
    monkeypatch.setattr(ft, "vector_probe", flipped)
    monkeypatch.setattr(ft, "predict_all", lambda m, d: devices.append(d) or real_predict(m, d))
    ep = ft.finetune_episode(x, y, tr, va, te, CPU, lrs=(1e-4, 0.3), steps=30, l2sp=0.1)
    assert devices == [CPU] * 3
    candidates = {"probe": ep.probe.val, "lr 0.0001": ep.runs["lr 0.0001"].val,
                  "lr 0.3": ep.runs["lr 0.3"].val}
    assert ep.chosen == max(candidates, key=candidates.get) != "probe"
    assert ep.chosen_test == ep.runs[ep.chosen].test


def test_finetune_episode_with_every_row_trained_reports_neutral_unseen_measures():
    """No row outside the training words: unseen shifts are 0 and the norm ratio 1. The
    probe's C comes from the grid `cs` given."""
    x, y = _toy(n=12, d=3, seed=10)
    every = np.arange(12)
    ep = ft.finetune_episode(x, y, every, every[:6], every[6:], CPU, lrs=(1e-2,), steps=2,
                             weight_decay_lr=1e-2, cs=(0.37,))
    assert ep.probe.c == 0.37
    for run in ep.runs.values():
        assert run.seen_shift > 0
        assert (run.unseen_shift, run.unseen_shift_min, run.unseen_norm_ratio_max) == (
            0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- splits


def _greedy(groups, n_test, n_val):
    """Whole groups in order: to test until it holds n_test, then to val until n_val."""
    test, val, train = [], [], []
    for g in groups:
        if len(test) < n_test:
            test += list(g)
        elif len(val) < n_val:
            val += list(g)
        else:
            train += list(g)
    return sorted(train), sorted(val), sorted(test)


def _families():
    """1,000 words: 30 families of two, the rest alone."""
    return [f"pair{i // 2}" if i < 60 else f"word{i}" for i in range(1000)]


def test_family_split_at_its_defaults_shuffles_families_with_seed_0():
    fam = _families()
    unique = sorted(set(fam))
    order = np.random.default_rng(0).permutation(len(unique))
    groups = [[i for i, f in enumerate(fam) if f == unique[u]] for u in order]
    want = _greedy(groups, 400, 300)
    sp = splits.family_split(fam)
    assert [sp.train.tolist(), sp.val.tolist(), sp.test.tolist()] == list(want)
    assert sp.kind == "family"


def test_random_split_at_its_defaults_is_a_seed_0_permutation():
    order = np.random.default_rng(0).permutation(1000)
    sp = splits.random_split(1000)
    assert sp.test.tolist() == sorted(order[:400])
    assert sp.val.tolist() == sorted(order[400:700])
    assert sp.train.tolist() == sorted(order[700:])
    assert sp.kind == "random"
    assert splits.random_split(10, test_fraction=0.2, val_words=3).sizes() == (5, 3, 2)


def test_an_empty_part_is_an_empty_integer_index():
    """A part that gets no word is an empty int64 array: it still indexes a label array."""
    labels = np.arange(5) % 2
    sp = splits.random_split(5, test_fraction=0.4, val_words=0)
    assert sp.val.dtype == np.int64 and sp.val.shape == (0,) and labels[sp.val].size == 0
    assert sp.sizes() == (3, 0, 2)
    fam = splits.family_split(["a", "a", "b"], test_fraction=1.0, val_words=0)
    assert fam.train.dtype == np.int64 and fam.train.shape == (0,) and fam.sizes() == (0, 0, 3)


def test_k_per_class_at_its_defaults_draws_with_seed_0_and_may_take_a_whole_class():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1])
    pool = np.arange(2, 12)
    rng = np.random.default_rng(0)
    want = np.concatenate([rng.choice(pool[labels[pool] == c], size=3, replace=False)
                           for c in (0, 1)])
    assert splits.k_per_class(labels, pool, 3).tolist() == want.tolist()
    every = splits.k_per_class(labels, pool, 5)  # each class has exactly 5 words in the pool
    assert sorted(every.tolist()) == pool.tolist()


# ----------------------------------------------------------------------------- sentences


def _tiny_vectors():
    from test_text import _tiny_vectors as tiny  # the six words of test_text's sentences

    return tiny()


def test_a_sentence_with_one_known_word_scores_that_word():
    """The mean over one known word is that word's vector; the probe may have extra steps."""
    vec = _tiny_vectors()
    probe = _three_step_probe(vec.rows(["good", "great", "bad", "awful"]), np.array([1, 1, 0, 0]))
    s = sentences.explain("zzz good", vec, probe)
    want = float(probe.decision_function(vec.rows(["good"]))[0])
    assert s.logit == pytest.approx(want, rel=1e-5)
    assert s.words[1].share == pytest.approx(want - s.intercept, rel=1e-5)


def test_a_lone_clitic_stays_whole():
    assert sentences.split_clitic("n't") == ["n't"]
    assert sentences.tokenize("n't bad") == ["n't", "bad"]


def test_table_shows_each_share_the_intercept_and_the_probability():
    score = sentences.SentenceScore(
        [sentences.Contribution("good", True, 0.25), sentences.Contribution("zzz", False, None)],
        intercept=-0.1, logit=0.15)
    p = 1 / (1 + math.exp(-0.15))
    assert sentences.table(score).split("\n") == [
        "word".ljust(16) + "share of logit".rjust(16),
        "good".ljust(16) + "+0.250".rjust(16),
        "zzz".ljust(16) + "not in GloVe".rjust(16),
        "(intercept)".ljust(16) + "-0.100".rjust(16),
        f"P(positive) = {p:.3f} (logit +0.150)"]
    none = sentences.SentenceScore([sentences.Contribution("zzz", False, None)], 0.2, None)
    assert sentences.table(none).split("\n")[-1] == "no word of the sentence is in GloVe: no score"


def test_panel_without_widgets_has_no_box(monkeypatch, capsys):
    vec = _tiny_vectors()
    panel = sentences.SentencePanel(vec, probes.fit_probe(vec.rows(["good", "bad"]),
                                                          np.array([1, 0])))
    assert panel.box is None
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    panel.show("good movie")
    assert panel.box is None


def test_panel_box_is_a_text_field_that_reprints_the_table_on_enter(monkeypatch, capsys):
    """The displayed box: a wide text field holding the sentence (updated on Enter, not per
    keystroke) above an output area; a new sentence replaces the table, nothing else does."""
    w = pytest.importorskip("ipywidgets")
    display_mod = pytest.importorskip("IPython.display")
    shown, cleared = [], []
    monkeypatch.setattr(display_mod, "display", lambda *objs: shown.append(objs))
    monkeypatch.setattr(w.Output, "clear_output", lambda self, **kw: cleared.append(kw))
    vec = _tiny_vectors()
    probe = probes.fit_probe(vec.rows(["good", "great", "bad", "awful"]), np.array([1, 1, 0, 0]))
    panel = sentences.SentencePanel(vec, probe)
    score = panel.show("good movie")
    table = lambda s: sentences.table(sentences.explain(s, vec, probe)) + "\n"
    assert capsys.readouterr().out == table("good movie")
    assert score.logit == sentences.explain("good movie", vec, probe).logit
    assert len(shown) == 1 and len(shown[0]) == 1 and shown[0][0] is panel.box
    assert isinstance(panel.box, w.VBox)
    field, out = panel.box.children
    assert isinstance(field, w.Text) and isinstance(out, w.Output)
    assert (field.value, field.description, field.layout.width) == ("good movie", "sentence",
                                                                    "90%")
    assert field.continuous_update is False
    field.placeholder = "bad"
    assert capsys.readouterr().out == "" and cleared == []
    field.value = "bad movie"
    assert capsys.readouterr().out == table("bad movie")
    assert cleared == [{"wait": True}]


# ----------------------------------------------------------------------------- package


def test_package_imports_each_submodule_on_first_use():
    for name in text_pkg.__all__:
        assert text_pkg.__getattr__(name) is importlib.import_module(f"tl_course.text.{name}")
    with pytest.raises(AttributeError, match="'tl_course.text' has no attribute 'nope'"):
        text_pkg.__getattr__("nope")
