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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tl-course/tl-course/blob/main/notebooks/02_feature_extraction.ipynb)
#
# # 02 · Feature extraction
#
# Notebook 01 ended with a claim: early layers learn generic features. Here we put it to
# work. We train a network on one task (the **source**), freeze it, and reuse its features
# for a different task (the **target**) that has very few labels:
#
# 1. the source / target split of the digits (0-4 vs 5-9, in the spirit of Yosinski et al.
#    2014, who split ImageNet's classes in two),
# 2. a frozen backbone with a new head, and the same thing as a **linear probe** on cached
#    features (and how much faster that is),
# 3. a **label-efficiency curve**: accuracy vs labels per class, from scratch vs transfer,
# 4. what the source features "see" in classes they were never trained on,
# 5. ImageNet features on real satellite photos (EuroSAT).

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
# The first output line names the profile (size of this run), the device and the time it
# should take.

# %%
import copy
import time

import matplotlib.pyplot as plt
import torch

import tl_course as tlc

session = tlc.start("02")  # seed: TL_COURSE_SEED (tl-course run --seed N), else 0
device, profile = session.device, session.profile

# %% [markdown]
# ## 1. Source and target tasks
#
# The **source** task is digits 0-4 with every label we have; the **target** task is digits
# 5-9 (relabelled 0-4). They share strokes, thickness and framing, but not a single class:
# anything the target gains comes from features, not from having seen its classes.

# %%
digits = tlc.load_digits("mnist", profile)
source, target = tlc.transfer.digit_split(digits)
print(f"source: {len(source.train)} train / {len(source.test)} test (digits 0-4)")
print(f"target: {len(target.train)} train / {len(target.test)} test (digits 5-9 as 0-4)")

# %%
fig, axes = plt.subplots(2, 1, figsize=(10, 3))
tlc.plots.show_images(source.train.tensors[0][:16], ax=axes[0], nrow=16, title="source")
tlc.plots.show_images(target.train.tensors[0][:16], ax=axes[1], nrow=16, title="target")
plt.show()

# %% [markdown]
# ## 2. The source model
#
# `tlc.transfer.source_model` trains the course's `DigitCNN` on the source task, seeded, and
# caches it: the first call trains (seconds to a minute), later calls and later notebooks
# load the same weights.
# The source model is the same in every session (trained once, with seed 0): the spread
# over session seeds below covers the target images and initialisations, not the source
# model's own training.

# %%
source_cnn = tlc.transfer.source_model(profile, device, source)
source_test = tlc.make_loader(source.test, profile.batch_size, device)
print(f"source model accuracy on digits 0-4: {tlc.accuracy(source_cnn, source_test, device):.3f}")

# %% [markdown]
# ## 3. A frozen backbone with a new head
#
# Copy the source model, give it a fresh 5-way head, and freeze the body: only the head's
# few thousand weights learn. Look at how few parameters that is.

# %%
frozen = copy.deepcopy(source_cnn).reset_head(5)
tlc.models.freeze_body(frozen)
print(f"trainable {tlc.count_parameters(frozen, trainable_only=True):,} "
      f"of {tlc.count_parameters(frozen):,} parameters")

# %% [markdown]
# ### Exercise 1: freeze a body yourself
#
# Make a fresh copy of `source_cnn` with a 5-class head (`reset_head(5)`) and freeze every
# parameter of `model.blocks` while the head stays trainable, without `freeze_body`. Frozen
# also means fixed BatchNorm statistics: a BatchNorm layer in train mode updates its
# running mean and variance even when its weights do not learn. A `DigitCNN` keeps the
# BatchNorm of the blocks named in `model.frozen_bn` in eval mode, also when `fit` calls
# `model.train()`. The check runs your model in train mode on a batch and looks.

# %%
my_frozen = ...  # your model here

tlc.exercises.check_frozen_body(my_frozen)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
my_frozen = copy.deepcopy(source_cnn).reset_head(5)
my_frozen.blocks.requires_grad_(False)
my_frozen.frozen_bn = set(my_frozen.blocks.keys())  # BatchNorm statistics stay fixed too
tlc.exercises.check_frozen_body(my_frozen)

# %% [markdown]
# Train the head with the frozen body in the loop. Every epoch pushes every image through
# the whole (unchanging) body again. Time it.

# %%
target_train = tlc.make_loader(target.train, profile.batch_size, device, shuffle=True)
target_test = tlc.make_loader(target.test, profile.batch_size, device)
probe_epochs = profile.scaled_epochs(10 / 3)

start = time.perf_counter()
frozen_history = tlc.fit(frozen, target_train, target_test, epochs=probe_epochs, device=device,
                         lr=1e-2, progress=profile.progress, desc="frozen body")
frozen_seconds = time.perf_counter() - start
print(f"frozen body + head: {frozen_history.last('val_acc'):.3f} in {frozen_seconds:.1f}s")

# %% [markdown]
# ## 4. The linear probe on cached features
#
# The body never changes, so compute its features **once** and train the head on those.
# Same model, same epochs; the timing includes the one-off extraction.

# %%
start = time.perf_counter()
train_features = tlc.features.extract_features(
    source_cnn, tlc.make_loader(target.train, profile.batch_size, device), device)
test_features = tlc.features.extract_features(source_cnn, target_test, device)
probe_head, probe_history = tlc.features.linear_probe(
    train_features, test_features, 5, device, epochs=probe_epochs, lr=1e-2,
    batch_size=profile.batch_size)
probe_seconds = time.perf_counter() - start
print(f"features {tuple(train_features.x.shape)}; probe: {probe_history.last('val_acc'):.3f} "
      f"in {probe_seconds:.2f}s")

# %% [markdown]
# The same head on the same features, so about the same accuracy; the probe trains at least
# 3 times faster (the claim below), because the body runs once instead of once per epoch.
# The saving grows with the epochs and the size of the backbone.

# %%
speedup = tlc.record("probe_speedup", frozen_seconds / probe_seconds)
session.claim("probe_faster", "Training the head on cached features is at least 3 times "
              "faster than running the frozen body every epoch.", "speedup >= margin",
              speedup=speedup, margin=3.0, why="a busy machine distorts short timings")
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].bar(["frozen body\nevery epoch", "cached features\n(probe)"],
            [frozen_seconds, probe_seconds], color=["tab:gray", "tab:green"])
axes[0].set(ylabel="seconds", title=f"same {probe_epochs} epochs: {speedup:.0f}x faster")
tlc.plots.plot_history(frozen_history, "acc", ax=axes[1], label="frozen")
tlc.plots.plot_history(probe_history, "acc", ax=axes[1], label="probe")
plt.tight_layout()
plt.show()

# %% [markdown]
# A linear probe does not even need PyTorch: scikit-learn's logistic regression on the same
# features gives a second opinion in a second.

# %%
_, sk_acc = tlc.features.sklearn_probe(train_features, test_features)
print(f"scikit-learn LogisticRegression on source features: {sk_acc:.3f}")

# %% [markdown]
# ### Exercise 2: a probe with no training
#
# The simplest classifier on features: predict the class whose **mean feature vector** is
# closest. Write `nearest_centroid(train_x, train_y, test_x)` returning a label per test row.

# %%
nearest_centroid = ...  # your function here

tlc.exercises.check_nearest_centroid(nearest_centroid)


# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def nearest_centroid(train_x, train_y, test_x):
    classes = torch.unique(train_y)
    means = torch.stack([train_x[train_y == c].mean(0) for c in classes])
    return classes[torch.cdist(test_x, means).argmin(1)]


tlc.exercises.check_nearest_centroid(nearest_centroid)
pred = nearest_centroid(train_features.x, train_features.y, test_features.x)
print(f"nearest centroid on source features: {(pred == test_features.y).float().mean():.3f}")

# %% [markdown]
# ## 5. Label efficiency: how many labels does transfer save?
#
# For k labels per target class we compare, over several seeds (which k images are
# picked, and initialisation):
# - **scratch**: a fresh `DigitCNN` trained on the k x 5 images;
# - **probe**: logistic regression on the frozen source features;
# - **finetune**: the source model with a new head, fine-tuned (head first, then all
#   layers with smaller learning rates for earlier blocks).
#
# Scratch and fine-tune get the **same training budget** (`profile.small_steps` gradient
# steps, seconds on a laptop). Read the curve at small k.
#
# A fair baseline first: scratch training gets its own learning rate, picked from a small
# sweep on **validation** digits (target training images outside the labelled subset),
# never on the test set. Fine-tuning keeps the course's default; it is not tuned here.

# %%
seeds = [session.seed * profile.seeds + i for i in range(profile.seeds)]  # new ones per session
sweep_pool, sweep_val = tlc.data.split(target.train, val_fraction=0.2, seed=seeds[0])
sweep_train = tlc.data.per_class_subset(sweep_pool, 10, seed=seeds[0])  # disjoint from val
scratch_lr, sweep = tlc.transfer.tune_scratch_lr(sweep_train, sweep_val, device,
                                                 profile.small_steps,
                                                 lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                                                 seeds=seeds[:1])
print("scratch validation accuracy by lr:", {f"{lr:g}": round(a, 3) for lr, a in sweep.items()})
print(f"scratch uses lr {scratch_lr:g}")

# %%
ks = [5, 10] if profile.name == "smoke" else [1, 5, 10, 25, 50]
efficiency = tlc.transfer.label_efficiency(source_cnn, target, ks, seeds, device,
                                           steps=profile.small_steps, scratch_lr=scratch_lr)
print(f"{len(seeds)} seed(s), {profile.small_steps} steps per run\n")
print(tlc.transfer.results_table(efficiency))

# %% [markdown]
# Read the spread (± over seeds) as well as the means. Each seed changes both which k
# images are picked and the initialisation; a network starting from random weights is far
# from done after this budget, so expect its spread to be wide.

# %%
tlc.plots.plot_label_efficiency(efficiency)
plt.title("digits 5-9: transfer from a 0-4 model")
plt.show()
summary = tlc.transfer.summarise(efficiency)
for method, by_k in summary.items():
    for k, (mean, _) in by_k.items():
        tlc.record(f"{method}_k{k}", mean)
scratch10, finetune10 = summary["scratch"][10][0], summary["finetune"][10][0]
session.claim("finetune_beats_scratch_k10", "At 10 labels per class and the same budget, "
              "fine-tuning beats scratch training by 8 points or more.",
              "finetune - scratch >= margin", finetune=finetune10, scratch=scratch10,
              margin=0.08, why="scratch is noisy at this budget: a lucky draw of images")

# %% [markdown]
# Is it the source's features, or would any features do? Two baselines probed exactly like
# the source model (standardised features, the same logistic regression, the same k = 10
# images): a **randomly initialised** `DigitCNN` (same architecture, no training) and the
# **raw pixels**. Pretraining earns its keep only if it beats both. Look at the random
# network too: convolutions, pooling and ReLUs already build useful features before any
# training (an architecture is a prior), so the bar is higher than "random" suggests.

# %%
baselines = tlc.transfer.summarise(tlc.transfer.label_efficiency(
    source_cnn, target, [10], seeds, device, steps=profile.small_steps,
    methods=("random_probe", "pixels")))
random10 = tlc.record("random_probe_k10", baselines["random_probe"][10][0])
pixels10 = tlc.record("pixels_probe_k10", baselines["pixels"][10][0])
probe10 = summary["probe"][10][0]
print(f"k = 10: source-model probe {probe10:.3f}, random-init probe {random10:.3f}, "
      f"pixels {pixels10:.3f}")
session.claim("probe_beats_random_k10", "At k = 10, the source model's features beat a "
              "random-init network's features, probed the same way, by 3 points or more.",
              "probe - random >= margin", probe=probe10, random=random10, margin=0.03,
              why="the source model is undertrained (fewer source digits or epochs)")
session.claim("random_beats_pixels_k10", "At k = 10, even random-init convolutional features "
              "beat raw pixels, probed the same way, by 3 points or more.",
              "random - pixels >= margin", random=random10, pixels=pixels10, margin=0.03,
              why="an unlucky random initialisation")
session.claim("probe_beats_pixels_k10", "At k = 10, the source model's features beat raw "
              "pixels, probed the same way, by 8 points or more.",
              "probe - pixels >= margin", probe=probe10, pixels=pixels10, margin=0.08,
              why="the source model is undertrained")

# %% [markdown]
# Is the gap about labels, or about time? Give scratch and fine-tune six times the budget
# at k = 10 and look again: the claims below say how much of the gap is left.

# %%
long_steps = 6 * profile.small_steps
long_run = tlc.transfer.label_efficiency(source_cnn, target, [10], seeds, device,
                                         steps=long_steps, methods=("scratch", "finetune"),
                                         scratch_lr=scratch_lr)
print(f"k = 10 with {long_steps} steps per run:\n")
print(tlc.transfer.results_table(long_run))
long_summary = tlc.transfer.summarise(long_run)
scratch10_long = tlc.record("scratch_k10_long", long_summary["scratch"][10][0])
finetune10_long = tlc.record("finetune_k10_long", long_summary["finetune"][10][0])
session.claim("longer_budget_narrows_gap", "With six times the steps, scratch closes at least "
              "5 points of its gap to fine-tuning at k = 10.",
              "(finetune - scratch) - (finetune_long - scratch_long) >= margin",
              finetune=finetune10, scratch=scratch10, finetune_long=finetune10_long,
              scratch_long=scratch10_long, margin=0.05,
              why="scratch had a lucky draw at the short budget")
session.claim("finetune_ahead_long", "Even with six times the steps, fine-tuning stays ahead "
              "of scratch at k = 10 by 2 points or more.", "finetune_long - scratch_long >= margin",
              finetune_long=finetune10_long, scratch_long=scratch10_long, margin=0.02,
              why="scratch caught up: with more steps it eventually does")

# %% [markdown]
# ### Exercise 3: read the numbers
#
# From `efficiency` (method -> k -> list of accuracies, one per seed), compute the mean
# fine-tune accuracy minus the mean scratch accuracy at k = 10.

# %%
gap = ...  # a number

tlc.exercises.check_transfer_gap(gap, efficiency, k=10)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
mean = lambda values: sum(values) / len(values)
gap = mean(efficiency["finetune"][10]) - mean(efficiency["scratch"][10])
tlc.exercises.check_transfer_gap(gap, efficiency, k=10)

# %% [markdown]
# ## 6. What the source features see
#
# A 2-D t-SNE map of target digits (5-9), which the source model **never saw**, through its
# features, next to the same map through a randomly initialised CNN. A map is a picture,
# not a measurement: the number under it is. For each digit we ask whether the most common
# class among its 5 nearest neighbours in feature space (standardised) is its own.

# %%
n_show = min(len(test_features), 600)
method = "pca" if profile.name == "smoke" else "tsne"  # t-SNE takes a while; smoke only checks
random_cnn = tlc.models.DigitCNN(num_classes=5)
random_features = tlc.features.extract_features(random_cnn, target_test, device)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, feats, title in [(axes[0], test_features, "source-model features"),
                         (axes[1], random_features, "random-init features")]:
    subset = tlc.features.Features(feats.x[:n_show], feats.y[:n_show])
    coords = tlc.features.embed_2d(subset, method)
    tlc.plots.plot_embedding(coords, subset.y, ax=ax, title=title,
                             names=["5", "6", "7", "8", "9"])
plt.tight_layout()
plt.show()

# %%
shown = tlc.features.Features(test_features.x[:n_show], test_features.y[:n_show])
shown_random = tlc.features.Features(random_features.x[:n_show], random_features.y[:n_show])
knn_source = tlc.record("knn_source_features", tlc.features.knn_accuracy(shown, k=5))
knn_random = tlc.record("knn_random_features", tlc.features.knn_accuracy(shown_random, k=5))
session.claim("source_features_cluster", "Target digits' nearest neighbours share their class "
              "more often in the source model's features than in random-init features, by 3 "
              "points or more.", "source - random >= margin", source=knn_source,
              random=knn_random, margin=0.03,
              why="an unusually good random initialisation")

# %% [markdown]
# ## 7. ImageNet features on real photos
#
# The same recipe at full scale: a torchvision ResNet-18 pretrained on ImageNet, frozen,
# with a linear probe on **EuroSAT** satellite photos (10 land-use classes, 64x64). We chose
# EuroSAT because it is a small download (94 MB) that a classroom can share, its labels are
# expensive in real life (someone has to annotate land use), and aerial views are far from
# ImageNet's objects: a fair test of how general ImageNet features are. Images get exactly
# the preprocessing the weights declare.
#
# Offline without a cache this section is skipped with a notice naming the fetch commands;
# in the smoke profile it runs on a labelled **stand-in** so the code path is exercised.

# %%
photos = tlc.photos.photo_task(profile, "resnet18", per_class_train=20, per_class_test=50)
print(photos.notice)
if not photos.available:
    tlc.record_skip("imagenet_eurosat", photos.notice)

# %% [markdown]
# Probe on ImageNet features, and the same probe on a randomly initialised ResNet-18 for
# comparison: their difference estimates what ImageNet pretraining buys with 20 labels per
# class (one draw of images, not checked over seeds).

# %%
if photos.available:
    photo_train = tlc.make_loader(photos.train, 64, device)
    photo_test = tlc.make_loader(photos.test, 64, device)
    pretrained_probe = tlc.features.sklearn_probe(
        tlc.features.extract_features(photos.model, photo_train, device),
        tlc.features.extract_features(photos.model, photo_test, device))[1]
    untrained = tlc.models.create_backbone("resnet18", len(photos.classes), pretrained=False)
    random_probe = tlc.features.sklearn_probe(
        tlc.features.extract_features(untrained, photo_train, device),
        tlc.features.extract_features(untrained, photo_test, device))[1]
    label = "STAND-IN " if photos.status == "standin" else ""
    print(f"{label}linear probe accuracy: pretrained {pretrained_probe:.3f} "
          f"vs random init {random_probe:.3f}")
    if photos.status == "real":
        tlc.record("eurosat_probe_acc", pretrained_probe)
        tlc.record("eurosat_random_probe_acc", random_probe)

# %% [markdown]
# ## What we saw
#
# - A frozen body plus a new head transfers: with 10 labels per class, a linear probe on the
#   0-4 model's features beat the same probe on random-init features and on raw pixels
#   (the claims under section 5 give the margins). Random convolutional features already
#   beat pixels by 3 points or more: part of what transfers is the architecture itself.
# - When the body is frozen, compute its features once: the linear probe trains the same
#   head at least 3 times faster (`probe_speedup`).
# - At 10 labels per class and the same small budget, fine-tuning beat scratch training
#   with a tuned learning rate by 8 points or more; six times the steps closed at least 5
#   points of that gap and left at least 2.
# - Target digits' nearest neighbours shared their class more often in the source features
#   than in random-init features (`knn_source_features` vs `knn_random_features`).
# - Section 7 runs the same probe with ImageNet weights on real photos when they are
#   cached; offline it is skipped and the run card says so.
#
# So far the body stayed frozen. **Next:** [03 · Fine-tuning](03_fine_tuning.ipynb): how much
# of it to unfreeze, with which learning rates, and when transfer hurts.
