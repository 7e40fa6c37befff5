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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tl-course/tl-course/blob/main/notebooks/05_multitask_learning.ipynb)
#
# # 05 · Multi-task learning
#
# So far knowledge flowed one way: train on a source, reuse on a target. Multi-task
# learning trains **several tasks at once** with one shared network, so each task is a
# source for the others. On images with two overlapping digits (MultiMNIST) we ask:
#
# 1. does one shared trunk with a small head per task match separate models, at a
#    fraction of the parameters?
# 2. how should the task losses be weighted: equally, by learned uncertainty, or by
#    editing the gradients themselves (PCGrad)?
# 3. when does an extra task help (scarce labels), and when does it hurt (an unrelated
#    task: negative transfer)?

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
# The first line of output tells you the **profile** (how big this run is), the
# **device** and roughly how long the notebook takes.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

import tl_course as tlc
from tl_course import multimnist, multitask

session = tlc.start("05")  # seed: TL_COURSE_SEED (tl-course run --seed N), else 0
device, profile = session.device, session.profile

# %% [markdown]
# ## 1. MultiMNIST: two digits, several tasks
#
# MultiMNIST (Sabour et al., 2017; the version Sener & Koltun, 2018, used for multi-task
# learning) is built from MNIST: put one digit at the top-left of a 36x36 canvas, a second
# one 6 pixels further right and down, keep the brighter pixel where they overlap, and
# shrink the result back to 28x28. Here is that mechanism on two digits; the course's
# `multimnist.compose_pairs` does exactly this (it shrinks with a smoother, antialiased
# filter than their code's nearest-neighbour resize).

# %%
digits = tlc.load_digits("mnist", profile)
a, b = digits.train.tensors[0][:1], digits.train.tensors[0][1:2]
canvas = torch.zeros(1, 1, 36, 36)
canvas[..., :28, :28] = a  # left digit at the top-left
canvas[..., 6:34, 6:34] = torch.maximum(canvas[..., 6:34, 6:34], b)  # right digit, shifted 6
small = torch.nn.functional.interpolate(canvas, size=(28, 28), mode="bilinear", antialias=True)
print("same as the package:", torch.allclose(small.clamp(0, 1), multimnist.compose_pairs(a, b)))

fig, axes = plt.subplots(1, 4, figsize=(8, 2.2))
for ax, img, title in zip(axes, [a, b, canvas, small], ["left", "right", "36x36", "28x28"],
                            strict=True):
    tlc.plots.show_images(img, ax=ax, title=title)
plt.show()

# %% [markdown]
# The dataset pairs every digit with random partners from the **same** split (train
# pairs use only training digits, test pairs only test digits), as many pairs as the
# profile's training size asks for. Each image carries several labels: `left` and
# `right` (the two tasks we care about), `sum`, `parity` (is the left digit odd) and
# `noise` (a random label per image that no picture can explain). The set is built once,
# deterministically, and cached.

# %%
data = multimnist.load_multimnist(profile, seed=0)
print(data)
images, labels = data.train[:12]
tlc.plots.show_images(images, nrow=12, title="left / right: " + "  ".join(
    f"{int(left)}{int(right)}" for left, right in zip(labels["left"], labels["right"], strict=True)))
plt.show()

# %% [markdown]
# A batch is `(images, {task: labels})`. Only the tasks a model has heads for are used.

# %%
train_loader = tlc.make_loader(data.train, profile.batch_size, device, shuffle=True)
test_loader = tlc.make_loader(data.test, 500, device)
xb, yb = next(iter(train_loader))
print(xb.shape, {task: y[:6].tolist() for task, y in yb.items()})

# %% [markdown]
# ## 2. Separate models vs hard parameter sharing
#
# **Hard parameter sharing**: one trunk (three conv stages and a linear layer) computes
# a feature vector; each task gets its own small linear head. The baseline trains one
# full model per task. Look at the parameter counts first.

# %%
tasks = {"left": 10, "right": 10}
singles = multitask.single_task_models(tasks)
shared = multitask.multitask_cnn(tasks)
print(shared.heads)
for name, model in [*singles.items(), ("shared", shared)]:
    print(f"{name:7s} {tlc.count_parameters(model):8,d} parameters")

# %% [markdown]
# One function trains any of these models the same way (same optimizer, schedule and
# epochs), so the runs differ only in the model and the loss weighting. It returns the
# test accuracy per task and the wall time.

# %%
epochs = profile.epochs


def train(model, dataset, weighting="equal", weights=None, n_epochs=epochs, lr=3e-3):
    """Train `model` on `dataset` with mtl_step; return (history, {task: test acc}, s)."""
    tlc.seed_everything(session.seed)  # same batch order for every run
    loader = tlc.make_loader(dataset, profile.batch_size, device, shuffle=True)
    opt = multitask.mtl_optimizer(model, lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_epochs)
    start = time.perf_counter()
    history = tlc.fit(model, loader, test_loader, epochs=n_epochs, device=device, optimizer=opt,
                      scheduler=sched, step=multitask.mtl_step(weighting=weighting,
                                                               weights=weights),
                      progress=profile.progress, desc=weighting)
    seconds = time.perf_counter() - start
    return history, multitask.task_accuracies(model, test_loader, device), seconds


def fresh(num_classes, uncertainty=False):
    """A new shared model, initialised the same way whatever ran before."""
    tlc.seed_everything(session.seed)
    return multitask.multitask_cnn(num_classes, uncertainty=uncertainty)


# %% [markdown]
# The two single-task baselines: each sees the same images but learns only its digit.

# %%
single_runs = {}
for task, model in singles.items():
    tlc.seed_everything(session.seed)
    single_runs[task] = train(model, data.train)
    print(f"single {task:5s}: test accuracy {single_runs[task][1][task]:.3f} "
          f"in {single_runs[task][2]:.0f}s")

# %% [markdown]
# The shared model learns both digits at once, with equal weights: loss = L_left + L_right.

# %%
shared_run = train(shared, data.train)
print(shared_run[0].summary())

# %% [markdown]
# Side by side: accuracy per digit, parameters and wall time. The ratio of parameters is
# the shared model's count over the two single-task models together.

# %%
ratio = multitask.param_ratio(shared, singles.values())
single_seconds = sum(run[2] for run in single_runs.values())
print(f"{'':22s}{'left':>8s}{'right':>8s}{'params':>10s}{'seconds':>9s}")
print(f"{'two single-task models':22s}{single_runs['left'][1]['left']:8.3f}"
      f"{single_runs['right'][1]['right']:8.3f}"
      f"{sum(tlc.count_parameters(m) for m in singles.values()):10,d}{single_seconds:9.1f}")
print(f"{'one shared model':22s}{shared_run[1]['left']:8.3f}{shared_run[1]['right']:8.3f}"
      f"{tlc.count_parameters(shared):10,d}{shared_run[2]:9.1f}")

tlc.record("mtl_single_left_acc", single_runs["left"][1]["left"])
tlc.record("mtl_single_right_acc", single_runs["right"][1]["right"])
tlc.record("mtl_shared_left_acc", shared_run[1]["left"])
tlc.record("mtl_shared_right_acc", shared_run[1]["right"])
tlc.record("mtl_param_ratio", ratio)
session.claim("shared_matches_single", "The shared model is within 2 points of the single-task "
              "models on both digits.", "abs(left_shared - left_single) <= margin and "
              "abs(right_shared - right_single) <= margin",
              left_shared=shared_run[1]["left"], left_single=single_runs["left"][1]["left"],
              right_shared=shared_run[1]["right"], right_single=single_runs["right"][1]["right"],
              margin=0.02,
              why="one task's head got a slow start; one run per session")

# %% [markdown]
# The history keeps every task's loss and accuracy (`val_left_acc`, `val_right_acc`, ...:
# measured here on the test pairs, since nothing is chosen from them), so the per-task
# curves come for free.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, task in zip(axes, tasks, strict=True):
    tlc.plots.plot_history(single_runs[task][0], f"{task}_acc", ax=ax, label="single")
    tlc.plots.plot_history(shared_run[0], f"{task}_acc", ax=ax, label="shared")
    ax.set_title(f"{task} digit")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Exercise 1: what sharing saves
#
# Compute the parameter ratio yourself: the shared model's parameters divided by the
# total of the two single-task models (`tlc.count_parameters` counts a model's
# parameters). Why is it a little above one half?

# %%
my_ratio = ...  # a number

tlc.exercises.check_param_ratio(my_ratio, shared, singles.values())

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
my_ratio = tlc.count_parameters(shared) / sum(tlc.count_parameters(m) for m in singles.values())
tlc.exercises.check_param_ratio(my_ratio, shared, singles.values())
# Above 0.5 because the shared model keeps one head per task: trunk + 2 heads over
# 2 trunks + 2 heads.
print(f"trunk {tlc.count_parameters(shared.trunk):,}, one head "
      f"{tlc.count_parameters(shared.heads['left']):,}")

# %% [markdown]
# ## 3. Weighting the tasks
#
# With equal weights, a task with a larger loss (or larger gradients) steers the trunk.
# Two remedies:
#
# - **Uncertainty weighting** (Kendall, Gal & Cipolla, 2018) learns one log-variance
#   $s_t$ per task and minimises $\sum_t e^{-s_t} L_t + s_t / 2$. A task whose loss stays
#   high pays less by growing $s_t$, so its weight $e^{-s_t}$ shrinks; the $s_t / 2$ term
#   stops every weight from collapsing to zero. The $s_t$ are parameters of the model.
# - **PCGrad** (Yu et al., 2020) edits gradients instead: when two tasks' gradients on the
#   shared trunk point against each other (negative inner product), each loses its
#   component along the other. Here it is on two small vectors:

# %%
g_left = torch.tensor([1.0, 1.0])
g_right = torch.tensor([-1.0, 0.5])
print("inner product before:", (g_left @ g_right).item())
p_left, p_right = multitask.pcgrad_project([g_left, g_right])
print("projected:", p_left.tolist(), p_right.tolist())
print("inner products after:", (p_left @ g_right).item(), (p_right @ g_left).item())

# %% [markdown]
# Both methods plug into the same `fit` through `mtl_step(weighting=...)`. Uncertainty
# weighting needs a model built with `uncertainty=True` (that is where its $s_t$ live).
# From here on the experiments use a third of the training pairs, to keep the notebook
# quick, so compare them with each other rather than with the table above.

# %%
pool = data.train.subset(len(data.train) // 3, seed=session.seed)
weighting_runs = {
    weighting: train(fresh(tasks, uncertainty=weighting == "uncertainty"), pool,
                     weighting=weighting)
    for weighting in ("equal", "uncertainty", "pcgrad")
}
print(f"{len(pool)} training pairs")
for weighting, (_, acc, seconds) in weighting_runs.items():
    print(f"{weighting:12s} left {acc['left']:.3f}  right {acc['right']:.3f}  {seconds:5.1f}s")

# %% [markdown]
# The learned weights $e^{-s_t}$ per epoch: watch whether the task whose loss is higher ends
# with the lower weight (section 5 checks it for a noise task). PCGrad costs one backward
# pass per task, which should show in its wall time above.

# %%
unc_history = weighting_runs["uncertainty"][0]
for task in tasks:
    plt.plot(range(1, unc_history.epochs + 1), unc_history[f"train_{task}_weight"], marker="o",
             label=task)
plt.xlabel("epoch")
plt.ylabel("weight exp(-s)")
plt.title("uncertainty weights")
plt.legend()
plt.show()

# %% [markdown]
# ### Exercise 2: PCGrad's projection
#
# Write `project(g1, g2)` for two flat gradient tensors: if they conflict ($g_1 \cdot g_2
# < 0$), return $g_1 - \frac{g_1 \cdot g_2}{\lVert g_2 \rVert^2} g_2$, otherwise $g_1$
# unchanged.

# %%
project = ...  # your function here

tlc.exercises.check_pcgrad_projection(project)


# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
def project(g1, g2):
    dot = g1 @ g2
    if dot < 0:
        return g1 - dot / (g2 @ g2) * g2
    return g1


tlc.exercises.check_pcgrad_projection(project)

# %% [markdown]
# ## 4. An auxiliary task when labels are scarce
#
# Suppose left-digit labels are expensive: only a few hundred images have one, while the
# right digit is labelled everywhere. A single-task model can learn only from the
# labelled images; a shared model also learns from every right-digit label. Both train on
# the same images with the same budget (`keep_labels` marks the rest as unlabelled).

# %%
n_scarce = max(30, len(data.train) // 40)
scarce = pool.keep_labels("left", n_scarce, seed=session.seed)
print(f"{len(pool)} images, {n_scarce} with a left-digit label")
scarce_runs = {
    "left only": train(fresh({"left": 10}), scarce),
    "left + right": train(fresh(tasks), scarce),
}
for name, (_, acc, _) in scarce_runs.items():
    print(f"{name:13s} left-digit test accuracy {acc['left']:.3f}")
gain = scarce_runs["left + right"][1]["left"] - scarce_runs["left only"][1]["left"]
print(f"the auxiliary task changed left accuracy by {gain:+.3f}")
tlc.record("mtl_aux_gain", gain)

# %% [markdown]
# Is that change larger than the run-to-run noise? One run cannot say: the change moves
# by several points from seed to seed (the README's benchmark table gives `mtl_aux_gain`
# as mean ± std over seeds), so no claim is made here. How much the extra task is worth
# should also depend on how much the main task's own labels already teach; we measured
# one size only. Try a smaller or larger `n_scarce`, or give the
# single-task model more epochs on its few labelled images, and see where the advantage
# goes.
#
# ## 5. A task that should hurt? Random labels
#
# Now add the `noise` task: a random label per image. Nothing in the picture predicts it,
# so the trunk could learn it only by memorising images, which could pull it away from the
# digits.
# Compare left and right accuracy without it (the equal-weight run of section 3, same
# pairs), with it at equal weight, and with the two remedies.

# %%
noise_tasks = {"left": 10, "right": 10, "noise": 10}
noise_runs = {
    "left+right": weighting_runs["equal"],
    "+noise equal": train(fresh(noise_tasks), pool),
    "+noise uncertainty": train(fresh(noise_tasks, uncertainty=True), pool,
                                weighting="uncertainty"),
    "+noise pcgrad": train(fresh(noise_tasks), pool, weighting="pcgrad"),
}
base = noise_runs["left+right"][1]
for name, (_, acc, _) in noise_runs.items():
    change = (acc["left"] + acc["right"] - base["left"] - base["right"]) / 2
    print(f"{name:19s} left {acc['left']:.3f}  right {acc['right']:.3f}  "
          f"mean change {change:+.3f}")
noise_change = {name: (acc["left"] + acc["right"] - base["left"] - base["right"]) / 2
                for name, (_, acc, _) in noise_runs.items()}
tlc.record("mtl_noise_equal_change", noise_change["+noise equal"])
tlc.record("mtl_noise_uncertainty_change", noise_change["+noise uncertainty"])
tlc.record("mtl_noise_pcgrad_change", noise_change["+noise pcgrad"])
session.claim("noise_effect_small", "At this size the noise task moves mean accuracy by at "
              "most 3 points either way, with equal weights, uncertainty weighting or PCGrad.",
              "max(abs(equal), abs(uncertainty), abs(pcgrad)) <= margin",
              equal=noise_change["+noise equal"], uncertainty=noise_change["+noise uncertainty"],
              pcgrad=noise_change["+noise pcgrad"], margin=0.03,
              why="a larger trunk or more epochs let the network memorise the noise labels")

# %% [markdown]
# A small effect, and not always the same sign from seed to seed (the README's benchmark
# table gives the mean ± std of `mtl_noise_equal_change`). A plausible reason, not
# measured: the trunk does not learn the noise task at all (next cell), so its gradients
# are mostly noise added to the digits' gradients.

# %% [markdown]
# The learned uncertainty weights tell the story of the noise task. In principle its loss
# *can* go down: a big enough network memorises random labels (Zhang et al., 2017). Here it
# stays at the chance level, $\log 10 \approx 2.30$: this trunk, in these epochs, does not
# memorise them. It stays the highest of the three losses, and for a fixed loss $L_t$ the
# weight that minimises $e^{-s_t} L_t + s_t / 2$ is $e^{-s_t} = 1 / (2 L_t)$: the task with
# the highest loss gets the smallest weight.

# %%
unc_noise_history = noise_runs["+noise uncertainty"][0]
learned_weights = {task: unc_noise_history.last(f"train_{task}_weight") for task in noise_tasks}
task_losses = {task: unc_noise_history.last(f"train_{task}_loss") for task in noise_tasks}
print("weights", {task: round(w, 2) for task, w in learned_weights.items()})
print("training losses (last epoch)", {task: round(v, 3) for task, v in task_losses.items()})
session.claim("noise_loss_at_chance", "The noise task's training loss ends within 0.05 of "
              "chance, log 10, and above both digit losses.",
              "abs(noise - chance) <= margin and noise > max(left, right)",
              noise=task_losses["noise"], chance=math.log(10), left=task_losses["left"],
              right=task_losses["right"], margin=0.05,
              why="more epochs or a larger trunk start to memorise the random labels")
session.claim("noise_turned_down", "Uncertainty weighting gives the noise task the smallest "
              "weight.", "noise < min(left, right)", noise=learned_weights["noise"],
              left=learned_weights["left"], right=learned_weights["right"],
              why="too few epochs for the weights to settle")

# %% [markdown]
# ### Exercise 3: which task was turned down?
#
# From the learned weights above, which task did uncertainty weighting give the smallest
# weight? Answer with its name.

# %%
turned_down = ...  # e.g. "left"

tlc.exercises.check_turned_down(turned_down, learned_weights)

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
turned_down = min(learned_weights, key=learned_weights.get)
tlc.exercises.check_turned_down(turned_down, learned_weights)

# %% [markdown]
# ## 6. Weigh the tasks yourself
#
# Fixed weights can trade one task against another. Move the sliders and press **Train** to
# train a shared model with those weights on the smaller set and see both accuracies.
# The cell first does one plain run with the weights below, so it also works where
# widgets do not (e.g. when the notebook runs as a test).

# %%
import ipywidgets as widgets
from IPython.display import display

widget_epochs = profile.scaled_epochs(0.5)


def weighted_run(w_left, w_right, w_noise=0.0):
    """Train left + right (+ noise when its weight is > 0) with fixed weights."""
    weights = {"left": w_left, "right": w_right}
    if w_noise > 0:
        weights["noise"] = w_noise
    model = fresh({t: data.num_classes[t] for t in weights})
    _, acc, _ = train(model, pool, weights=weights, n_epochs=widget_epochs)
    return acc


plain = weighted_run(1.0, 0.2)
print("weights left 1.0, right 0.2:", {t: round(a, 3) for t, a in plain.items()})

sliders = {t: widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description=t)
           for t in ("left", "right", "noise")}
sliders["noise"].value = 0.0
button, out = widgets.Button(description="Train"), widgets.Output()


def on_click(_):
    with out:
        acc = weighted_run(*(s.value for s in sliders.values()))
        print({t: round(a, 3) for t, a in acc.items()})


button.on_click(on_click)
display(widgets.VBox([*sliders.values(), button, out]))

# %% [markdown]
# ## What we saw
#
# - One shared trunk with a linear head per digit reached about the accuracy of two
#   separate models (compare `mtl_shared_*_acc` with `mtl_single_*_acc` above) with
#   `mtl_param_ratio` of the parameters: hard sharing is cheap.
# - The history kept every task's loss and accuracy; uncertainty weighting learned one
#   weight per task, PCGrad removed conflicting gradient components at the price of one
#   backward pass per task; section 3's table shows what each did for the two digits.
# - An auxiliary task is a source of supervision for the shared trunk; with few scarce
#   left-digit labels, its effect on left-digit accuracy was smaller than the run-to-run
#   noise of a single run, so section 4 makes no claim.
# - A task unrelated to the others (random labels) was not learnt at all (its loss stayed at
#   chance) and moved accuracy by at most 3 points, in either direction. Uncertainty
#   weighting turned it down, because its loss stayed the highest.
#
# Multi-task learning is transfer in all directions at once: the same question as in
# notebooks 02-04 (what is shared, and does sharing help the task I care about?) with
# the answer measured rather than assumed.
#
# **Back to the start:** [course overview](../README.md)
