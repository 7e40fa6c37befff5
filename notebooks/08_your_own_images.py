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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tl-course/tl-course/blob/main/notebooks/08_your_own_images.ipynb)
#
# # 08 · Capstone: transfer to your own images
#
# Everything so far ran on the course's data. Here you point it at **a folder of your own
# images**, one subfolder per class, and leave with a model you can use:
#
# 1. your folder (a path, an upload, or Google Drive on Colab), read safely and looked at;
# 2. a backbone chosen by accuracy, size and speed, side by side;
# 3. probe or fine-tune, against the majority-class baseline;
# 4. the confusion matrix and the **top losses** (the images the model is most wrong about);
# 5. where the model looks (Grad-CAM);
# 6. export, reload in a fresh object, and predict a new image.
#
# The same steps from a terminal: `tl-course train-folder DIR --out model` and
# `tl-course predict IMAGE_OR_DIR --model model`.

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
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import tl_course as tlc
from tl_course import capstone as cap

session = tlc.start("08")  # seed: TL_COURSE_SEED (tl-course run --seed N), else 0
device, profile = session.device, session.profile
smoke = profile.name == "smoke"
PER_CLASS = (12, 10, 8, 6, 5) if smoke else (60, 50, 40, 30, 24)  # the stand-in's sizes

# %% [markdown]
# ## 1. Your folder
#
# Put your images in one subfolder per class, e.g. `my_photos/cats/*.jpg` and
# `my_photos/dogs/*.jpg`, and set `FOLDER` to it (the class folders themselves, not a
# `train/` / `val/` split above them). Classes are the subfolder names, sorted
# alphabetically. Any size and most formats work (JPEG, PNG, WebP, BMP; greyscale,
# transparent and CMYK images are converted; phone photos are turned upright by their
# EXIF tag). Hidden files and non-images are ignored; images that cannot be read are
# skipped and listed, never a crash halfway through training.
#
# Left as `None`, the notebook writes a **stand-in folder** from data the course has
# offline: MNIST-M digits 5-9 (real MNIST strokes blended into real photos), saved as
# files of mixed formats and sizes, uneven classes, plus the debris real folders hold (a
# hidden file, a text file, a truncated JPEG). A second stand-in folder, with other
# images, is the **held-out test set**: the validation split below helps choose, the
# test folder is only for the final number.

# %%
FOLDER = None  # e.g. "~/my_photos"
TEST_FOLDER = None  # optional: a folder of other images, same class subfolders
data = tlc.data.data_dir() / "capstone"
STANDIN = FOLDER is None  # the claims below are about the stand-in folder only
if STANDIN:
    FOLDER = cap.write_demo_folder(data / "demo_train", PER_CLASS, seed=session.seed)
    TEST_FOLDER = cap.write_demo_folder(data / "demo_test", (40,) * 5, seed=session.seed,
                                        start=100, debris=False)
    print("using the course's stand-in folder (MNIST-M digits as image files)")
scan = cap.scan_folder(FOLDER)
print(scan.summary())
if STANDIN:
    debris = [p for p in scan.paths if p.name.startswith(".") or p.suffix == ".txt"]
    session.claim("debris_handled", "On the stand-in folder, the truncated image is skipped "
                  "and listed, and no hidden or text file is taken as an image.",
                  "skipped >= 1 and debris <= 0", skipped=len(scan.skipped),
                  debris=len(debris))
    print(f"{len(scan.skipped)} unreadable file(s) listed, {len(debris)} debris files used")

# %% [markdown]
# **Uploading instead** (JupyterLab or Colab): run the next cell with `UPLOAD = True`, pick
# the images of one class, type its name, press the button, and repeat per class; then
# set `FOLDER` to the printed folder and run the cell above again. On Colab, Google Drive
# works too: `from google.colab import drive; drive.mount("/content/drive")`, then copy
# the folder to the local disk first (every image is read twice, and Drive is slow):
# `!cp -r /content/drive/MyDrive/my_photos /content/` and
# `FOLDER = "/content/my_photos"`.

# %%
UPLOAD = False
if UPLOAD:
    import ipywidgets as widgets

    uploads = widgets.FileUpload(accept="image/*", multiple=True)
    name = widgets.Text(description="class")
    save = widgets.Button(description="save this class")
    log = widgets.Output()

    def on_save(_):
        with log:  # prints inside a callback only show in an Output widget
            saved = cap.save_uploads(uploads.value, data / "uploaded", name.value)
            print(f"saved {len(saved)} image(s) to {data / 'uploaded' / name.value}")
        uploads.value = ()  # ready for the next class

    save.on_click(on_save)
    display(widgets.VBox([uploads, name, save, log]))  # noqa: F821 (IPython's display)

# %% [markdown]
# ### Look at the data before training
#
# A few images per class, as the model will see them. Check that the classes are what
# you think, and note the class sizes: with uneven classes, always compare with the
# **majority baseline** (always answering the biggest class).

# %%
fig, axes = plt.subplots(len(scan.classes), 6, figsize=(7, 1.3 * len(scan.classes)))
for row, cls in enumerate(scan.classes):
    paths = [p for p, y in zip(scan.paths, scan.labels, strict=True) if y == row][:6]
    for ax in axes[row]:
        ax.axis("off")
    for ax, p in zip(axes[row], paths, strict=False):
        ax.imshow(cap.load_rgb(p))
    axes[row, 0].set_title(cls, fontsize=8, loc="left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Choosing a backbone: accuracy, size, speed
#
# The backbone is the pretrained network whose features we reuse. Offline, the course
# has its own: `digits`, notebook 02's source model (trained on greyscale MNIST digits
# 0-4; it sees every image as 28x28 greyscale, fine for digits, poor for photos), and
# `digits-scratch`, the same network at random initialisation (no pretraining: the
# baseline, trained plainly at one learning rate). With ImageNet weights cached, or
# downloadable (Colab), the ImageNet models join the table, here at 128 px to keep the run
# short (their default, 224 px, is better for real photos). Each is fine-tuned with the
# same budget in steps on the same split, and scored on the **validation** images.

# %%
candidates = [cap.DIGITS, cap.SCRATCH]
for name in ("mobilenet_v3_small", "resnet18"):
    if profile.allow_download and not tlc.models.weights_cached(name):
        try:
            tlc.models.fetch_weights(name)  # only when online; else left out below
        except tlc.models.WeightsUnavailableError:
            pass
    if tlc.models.weights_cached(name):
        candidates.append(name)
    else:
        print(f"{name}: ImageNet weights not cached, left out (tl-course fetch {name})")
SIZES = {name: 128 for name in candidates if name not in (cap.DIGITS, cap.SCRATCH)}
runs, out = {}, data / "runs"
for name in candidates:
    runs[name] = cap.train_folder(FOLDER, out / name, backbone=name, mode="finetune",
                                  seed=session.seed, image_size=SIZES.get(name),
                                  profile=profile, device=device, scan=scan)

# %%
print(f"{'backbone':20s}{'val accuracy':>14s}{'parameters':>12s}{'images/s':>10s}")
for name, r in runs.items():
    exported = cap.load_export(r.out, device)
    x = cap.load_tensors(scan.paths[:128], exported.meta["preprocess"])
    speed = cap.images_per_second(exported.model, x, device)
    print(f"{name:20s}{r.metrics['val_accuracy']:14.3f}{exported.meta['parameters']:12,d}"
          f"{speed:10.0f}")
print(f"majority baseline on validation: {runs[cap.DIGITS].metrics['majority_baseline']:.3f}")
if STANDIN:
    scratch, pre = runs[cap.SCRATCH].metrics, runs[cap.DIGITS].metrics
    print(f"digits vs digits-scratch: {pre['val_accuracy'] - scratch['val_accuracy']:+.3f} "
          f"({round((pre['val_accuracy'] - scratch['val_accuracy']) * pre['val_images'])} "
          f"of {pre['val_images']} validation images)")

# %% [markdown]
# ## 3. Probe or fine-tune
#
# Pretraining's edge over training from scratch, printed above, is at most a few
# validation images on this stand-in: not established. With the backbone chosen (the best
# of the table on your folder; `digits` on the stand-in, which the claims below are
# about), the two ways of notebooks 02 and 03: a linear **probe** on frozen features, and
# **fine-tuning** everything. Here the target
# (coloured digits on photos) looks unlike the source (grey digits on black); a likely
# reason, not measured here, why fine-tuning wins below. On your photos with an ImageNet
# backbone, measure both: the probe is much cheaper.

# %%
BACKBONE = cap.DIGITS if STANDIN else max(runs, key=lambda n: runs[n].metrics["val_accuracy"])
probe = cap.train_folder(FOLDER, out / "probe", backbone=BACKBONE, mode="probe",
                         seed=session.seed, image_size=SIZES.get(BACKBONE), profile=profile,
                         device=device, scan=scan)
final = runs[BACKBONE]
print(f"training time: probe {probe.metrics['train_seconds']} s, fine-tuning "
      f"{final.metrics['train_seconds']} s")
print(f"validation accuracy: probe {probe.metrics['val_accuracy']:.3f}, fine-tuned "
      f"{final.metrics['val_accuracy']:.3f}, majority baseline "
      f"{final.metrics['majority_baseline']:.3f}")
print(final.report())
if STANDIN:
    session.claim("finetune_beats_probe", "On the stand-in's validation split, fine-tuning "
                  "the digits backbone beats the probe on its frozen features by 10 points "
                  "or more.", "finetune - probe >= margin", margin=0.1,
                  finetune=final.metrics["val_accuracy"], probe=probe.metrics["val_accuracy"])
    session.claim("scratch_beats_probe", "On the stand-in's validation split, even the "
                  "untrained network trained from scratch beats the probe on the digits "
                  "backbone's frozen features by 5 points or more.",
                  "scratch - probe >= margin", margin=0.05,
                  scratch=runs[cap.SCRATCH].metrics["val_accuracy"],
                  probe=probe.metrics["val_accuracy"])
    print("frozen MNIST features are a poor fit for digits on photos")

# %% [markdown]
# ## 4. Reading the errors: confusion matrix and top losses
#
# The confusion matrix says which classes are mixed up; the **top losses** are the
# validation images the model is most confidently wrong about. They are where you find
# mislabelled files, ambiguous images and what the model has not learnt.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
tlc.plots.plot_confusion_matrix(final.val_true, final.val_pred, len(scan.classes), ax=ax)
ax.set_xticks(range(len(scan.classes)), scan.classes, rotation=45)
ax.set_yticks(range(len(scan.classes)), scan.classes)
plt.show()
plt.figure(figsize=(7, 7))
plt.imshow(plt.imread(final.out / "top_losses.png"))
plt.axis("off")
plt.show()

# %% [markdown]
# ## 5. Where the model looks
#
# Grad-CAM (as in notebook 07) shows which regions pushed the prediction. If it lights up
# the background rather than the object, the model may have learnt something about how
# your photos were taken rather than what is in them (dataset bias, notebook 07).

# %%
exported = cap.load_export(final.out, device)
shown = final.val_paths[:4]
x = torch.stack([exported.tensor(p) for p in shown])
cams = tlc.explain.grad_cam(exported.model, x)
preds = exported.model(x.to(device)).argmax(1).cpu()
fig, axes = plt.subplots(1, len(shown), figsize=(8, 2.6))
for ax, p, cam, c in zip(axes, shown, cams, preds, strict=True):
    tlc.plots.show_cam(cap.load_rgb(p), cam, ax=ax,
                       title=f"true {p.parent.name}\npred {scan.classes[int(c)]}")
plt.show()

# %% [markdown]
# ## 6. Export, reload, predict
#
# `train_folder` exported the model: `model.pt` (the weights only, loaded with
# `weights_only=True`, so no code runs from the file) and `model.json` (classes, backbone,
# preprocessing, metrics, versions, split seed). A fresh object loaded from those two
# files, on whatever device is here, must predict exactly what the trained model did.

# %%
reloaded = cap.load_export(final.out, torch.device("cpu"))
val_x = torch.stack([reloaded.tensor(p) for p in final.val_paths])
with torch.no_grad():
    again = reloaded.model(val_x).argmax(1)
changed = int((again != final.val_pred).sum())
print(f"reloaded on the CPU: {changed} of {len(again)} validation predictions changed")
if STANDIN:
    session.claim("reload_same_predictions", "The reloaded export gives the same validation "
                  "predictions as the trained model.", "changed <= 0", changed=changed)
print(f"model.json: backbone {reloaded.meta['backbone']}, classes {reloaded.classes}")

# %% [markdown]
# The final number comes from images no choice has seen: the held-out test folder,
# predicted through the same function `tl-course predict` uses.

# %%
if TEST_FOLDER is None:
    print("no TEST_FOLDER: the validation numbers above are all you have, and they are "
          "optimistic (the backbone was chosen on them); keep some images apart next time")
else:
    test_scan = cap.scan_folder(TEST_FOLDER)
    unknown = sorted(set(test_scan.classes) - set(scan.classes))
    if unknown:
        raise ValueError(f"TEST_FOLDER has classes the model never saw: {unknown}; its "
                         f"subfolders must be among {scan.classes}")
    rows = cap.predict_images(reloaded, test_scan.paths, top_k=2)
    predicted = [r["top"][0][0] for r in rows]
    truth = [test_scan.classes[y] for y in test_scan.labels]
    test_acc = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    majority = final.metrics["majority_class"]
    test_majority = sum(t == majority for t in truth) / len(truth)
    print(f"test folder: accuracy {test_acc:.3f} on {len(truth)} images; the majority "
          f"class ('{majority}') would score {test_majority:.3f}")
    print(f"one row as `tl-course predict` writes it (true class {truth[0]}):", rows[0])
if STANDIN:
    tlc.record("capstone_test_acc", test_acc)
    tlc.record("capstone_test_majority", test_majority)
    tlc.record("capstone_val_acc_finetune", final.metrics["val_accuracy"])
    tlc.record("capstone_val_acc_probe", probe.metrics["val_accuracy"])
    tlc.record("capstone_val_acc_scratch", runs[cap.SCRATCH].metrics["val_accuracy"])
    session.claim("beats_majority", "On the stand-in's held-out test folder, the fine-tuned "
                  "model beats the majority-class baseline by 30 points or more.",
                  "acc - majority >= margin", margin=0.3, acc=test_acc,
                  majority=test_majority)
    print("the held-out folder is the number to report; validation was for choosing")

# %% [markdown]
# ### Exercise 1: the majority baseline
#
# From the class counts alone (`scan.counts()`), what validation accuracy would always
# answering the biggest class get, roughly? Give the share of the biggest class among
# all images (a number between 0 and 1); the check compares it with the counts.

# %%
my_majority_share = ...  # e.g. max(counts) / sum(counts)

tlc.exercises.check_majority_share(my_majority_share, scan.counts())

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
counts = scan.counts()
my_majority_share = max(counts.values()) / sum(counts.values())
tlc.exercises.check_majority_share(my_majority_share, counts)

# %% [markdown]
# ### Exercise 2: the weakest class
#
# Which class does the fine-tuned model get wrong most often on validation? Answer with
# its name; `final.metrics["per_class_accuracy"]` has what you need. Then look at the top
# losses again: are those images mostly of that class?

# %%
my_weakest = ...  # a class name

tlc.exercises.check_weakest_class(my_weakest, final.metrics["per_class_accuracy"])

# %% cellView="form" jupyter={"source_hidden": true} tags=["solution"]
# @title Solution
per_class = final.metrics["per_class_accuracy"]
my_weakest = min(per_class, key=per_class.get)
tlc.exercises.check_weakest_class(my_weakest, per_class)

# %% [markdown]
# ## What we saw
#
# Each point below is one of the claims printed above, checked at seeds 0, 1 and 2 on the
# stand-in folder.
#
# - The truncated image was skipped and listed, and no hidden or text file was taken for
#   an image.
# - On the validation split, fine-tuning the `digits` backbone beat the probe on its
#   frozen features by 10 points or more, and even the same network trained from scratch
#   beat that probe by 5 or more: grey MNIST features fit digits on photos poorly.
# - On the held-out test folder, the fine-tuned `digits` model beat the majority-class
#   baseline by 30 points or more.
# - The export reloaded in a fresh object on the CPU gave the same validation predictions
#   as the trained model.
#
# The backbone table is measured on the validation split, which is small: read it as a
# guide for your folder, not a ranking.
# From a terminal, the same: `tl-course train-folder FOLDER --out model` and
# `tl-course predict IMAGE --model model`.
#
# **Several processes, same command.** `torchrun` (PyTorch's launcher) starts one copy per
# GPU, or per CPU process, and `train-folder` turns into a DistributedDataParallel run:
#
# ```bash
# # one machine, 2 processes (GPUs: NCCL; CPU only: gloo)
# torchrun --nproc-per-node 2 -m tl_course.cli train-folder FOLDER --out model
# # several machines: the same line on each, pointing at the first one
# torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \
#     --rdzv-endpoint first-machine:29400 --rdzv-id run1 \
#     -m tl_course.cli train-folder FOLDER --out model
# ```
#
# Each process trains on its own shard of every batch and DDP averages the gradients, so
# all processes keep identical weights; the global batch and learning rates are those of
# one process, and the run prints them. Only rank 0 writes the export, in the same format
# as above. On a cluster, every machine needs the folder at the same path and the same
# environment, and a scheduler (e.g. Slurm's `srun`) starts one `torchrun` per machine.
#
# **Back to the start:** [course overview](../README.md)
