"""Transfer recipes on the digit world: the course's source model, fine-tuning, label efficiency.

The source task is digits 0-4 and the target task digits 5-9 (relabelled 0-4), in the
spirit of Yosinski et al. (2014), who split ImageNet's 1,000 classes into two halves that
share no class (their layer-by-layer transfer experiments are not reproduced here): the
two tasks share the pixels' statistics but no class.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .data import DigitsData, data_dir, filter_classes, make_loader, per_class_subset
from .device import seed_everything
from .distributed import Dist
from .features import Features, extract_features, sklearn_probe
from .models import (
    DigitCNN,
    TransferModel,
    freeze_body,
    param_groups,
    set_trainable,
    unfreeze_all,
)
from .profile import Profile
from .train import History, accuracy, fit, load_checkpoint, save_checkpoint

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
# Inference batch size: on a laptop CPU, 128 ran this CNN 2.4x faster per image than 512
# (the activations of a bigger batch fall out of the caches).
EVAL_BATCH = 128


def digit_split(digits: DigitsData) -> tuple[DigitsData, DigitsData]:
    """(source, target): digits 0-4 and digits 5-9 relabelled 0-4, train and test each."""
    def part(classes: Sequence[int], name: str) -> DigitsData:
        return DigitsData(f"{digits.name}_{name}", filter_classes(digits.train, classes),
                          filter_classes(digits.test, classes), digits.source, digits.notice)

    return part(SOURCE_CLASSES, "0-4"), part(TARGET_CLASSES, "5-9")


def steps_to_epochs(n_examples: int, batch_size: int, steps: int) -> int:
    """Epochs that give about `steps` gradient steps on `n_examples` (at least 1)."""
    per_epoch = math.ceil(n_examples / batch_size)
    return max(1, round(steps / per_epoch))


def scramble_pixels(ds: TensorDataset, seed: int = 0) -> TensorDataset:
    """The same images with their pixels shuffled by one fixed permutation.

    A deliberately dissimilar source domain: same labels, but no strokes, no locality,
    nothing a convolution filter trained on it could reuse on real digits.
    """
    x, y = ds.tensors[0], ds.tensors[1]
    perm = torch.randperm(x[0].numel(), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x.flatten(1)[:, perm].reshape(x.shape), y)


def source_model(
    profile: Profile,
    device: torch.device,
    source: DigitsData,
    seed: int = 0,
    root: Path | None = None,
    scrambled: bool = False,
) -> DigitCNN:
    """The course's source model: a DigitCNN trained on digits 0-4, cached (load-or-train).

    Training is seeded, so the cached file is what any machine would have trained; its
    name records what it was trained on (data source, size, epochs, seed). With
    `scrambled`, it is trained on pixel-scrambled digits instead (a dissimilar source).
    """
    epochs = profile.scaled_epochs(4 / 3)
    kind = "full" if "full" in source.source else "sample"
    variant = "scrambled" if scrambled else "src0-4"
    name = f"digitcnn_{variant}_{kind}{len(source.train)}_e{epochs}_s{seed}.pt"
    path = (data_dir() if root is None else root) / "models" / name
    seed_everything(seed)
    model = DigitCNN(num_classes=len(SOURCE_CLASSES))
    if path.exists():
        load_checkpoint(model, path)
        print(f"source model loaded from {path}")
        return model.to(device)
    start = time.perf_counter()
    if scrambled:
        source = DigitsData(source.name, scramble_pixels(source.train),
                            scramble_pixels(source.test), source.source)
    loader = make_loader(source.train, profile.batch_size, device, shuffle=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs)
    fit(model, loader, epochs=epochs, device=device, optimizer=opt, scheduler=sched,
        progress=profile.progress, desc="source 0-4")
    save_checkpoint(model, path)
    acc = accuracy(model, make_loader(source.test, EVAL_BATCH, device), device)
    print(f"source model trained in {time.perf_counter() - start:.0f}s "
          f"(accuracy on held-out digits 0-4: {acc:.3f}), saved to {path}")
    return model


def fine_tune(
    model: TransferModel,
    train_loader,
    val_loader,
    device: torch.device,
    epochs: int,
    head_epochs: int = 1,
    lr: float = 2e-3,
    decay: float = 0.3,
    bn: str = "frozen",
    weight_decay: float = 1e-4,
    progress: bool = False,
    dist: Dist | None = None,
) -> History:
    """fastai-style fine_tune: train the new head on the frozen body, then unfreeze all
    with discriminative learning rates (each earlier block `decay` times the next one's).
    `dist`: under torchrun, passed to fit (each phase wraps the model in DDP anew, because
    DDP synchronises only the parameters that were trainable when it wrapped them).
    """
    freeze_body(model, bn=bn)
    history = fit(model, train_loader, val_loader, epochs=head_epochs, device=device, lr=lr,
                  weight_decay=weight_decay, progress=progress, desc="head", dist=dist)
    unfreeze_all(model)
    opt = torch.optim.AdamW(param_groups(model, lr / 2, decay), weight_decay=weight_decay)
    history.extend(fit(model, train_loader, val_loader, epochs=epochs, device=device,
                       optimizer=opt, progress=progress, desc="fine-tune", dist=dist))
    return history


def gradual_unfreeze(
    model: TransferModel,
    train_loader,
    val_loader,
    device: torch.device,
    epochs_per_stage: int,
    lr: float = 1e-3,
    progress: bool = False,
) -> History:
    """ULMFiT's gradual unfreezing: train the head, then unfreeze one more block per stage,
    from the last block to the first, so early (general) features change last and least.
    """
    freeze_body(model)
    history = fit(model, train_loader, val_loader, epochs=epochs_per_stage, device=device,
                  lr=lr, progress=progress, desc="head")
    names = model.block_names
    for i in range(len(names) - 1, -1, -1):
        set_trainable(model, names[i:], head=True, bn="frozen")
        history.extend(fit(model, train_loader, val_loader, epochs=epochs_per_stage,
                           device=device, lr=lr, progress=progress, desc=f"+{names[i]}"))
    return history


def train_scratch(
    train: TensorDataset, device: torch.device, steps: int, seed: int = 0,
    lr: float = 3e-3, batch_size: int = 32, num_classes: int = 5,
) -> DigitCNN:
    """A fresh DigitCNN trained on `train` for about `steps` gradient steps."""
    seed_everything(seed)
    model = DigitCNN(num_classes=num_classes)
    loader = make_loader(train, batch_size, device, shuffle=True, seed=seed)
    fit(model, loader, epochs=steps_to_epochs(len(train), batch_size, steps), device=device,
        lr=lr, weight_decay=1e-4, progress=False)
    return model


def train_finetune(
    source: TransferModel, train: TensorDataset, device: torch.device, steps: int,
    seed: int = 0, batch_size: int = 32, num_classes: int = 5, decay: float = 0.3,
) -> TransferModel:
    """A copy of `source` with a new head, fine-tuned on `train` for about `steps` steps.

    `decay` sets the discriminative learning rates (each earlier block `decay` times the
    next one's); decay=1 gives every block the same learning rate.
    """
    seed_everything(seed)
    model = copy.deepcopy(source).reset_head(num_classes)
    loader = make_loader(train, batch_size, device, shuffle=True, seed=seed)
    epochs = steps_to_epochs(len(train), batch_size, steps)
    head_epochs = max(1, epochs // 4)
    fine_tune(model, loader, None, device, epochs=max(1, epochs - head_epochs),
              head_epochs=head_epochs, decay=decay)
    return model


METHODS = ("scratch", "probe", "finetune", "random_probe", "pixels")


def _pixels(ds: TensorDataset) -> Features:
    return Features(ds.tensors[0].flatten(1).float(), ds.tensors[1])


def tune_scratch_lr(
    train: TensorDataset,
    val: TensorDataset,
    device: torch.device,
    steps: int,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    seeds: Sequence[int] = (0,),
) -> tuple[float, dict[float, float]]:
    """The scratch baseline's learning rate, chosen on a validation set (never the test set).

    Returns (best lr, {lr: mean validation accuracy over seeds}).
    """
    val_loader = make_loader(val, EVAL_BATCH, device)
    scores = {}
    for lr in lrs:
        accs = [accuracy(train_scratch(train, device, steps, seed, lr=lr), val_loader, device)
                for seed in seeds]
        scores[lr] = sum(accs) / len(accs)
    return max(scores, key=scores.__getitem__), scores


def label_efficiency(
    source: TransferModel,
    target: DigitsData,
    ks: Sequence[int],
    seeds: Sequence[int],
    device: torch.device,
    steps: int,
    methods: Sequence[str] = ("scratch", "probe", "finetune"),
    progress: Callable[[str], None] | None = None,
    scratch_lr: float = 3e-3,
) -> dict[str, dict[int, list[float]]]:
    """Target test accuracy by method and labels per class k, one value per seed.

    scratch: a fresh CNN on the k*classes labels (learning rate `scratch_lr`); probe:
    logistic regression on the source model's standardised features; finetune: the
    source model fine-tuned with fine_tune; random_probe: the same probe on a randomly
    initialised DigitCNN (the baseline any pretraining must beat); pixels: the same
    probe on raw pixels.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; use {', '.join(METHODS)}")
    test_loader = make_loader(target.test, EVAL_BATCH, device)
    test_feats: Features | None = None
    results: dict[str, dict[int, list[float]]] = {m: {k: [] for k in ks} for m in methods}
    for k in ks:
        for seed in seeds:
            train = per_class_subset(target.train, k, seed=seed)
            if "scratch" in methods:
                model = train_scratch(train, device, steps, seed, lr=scratch_lr)
                results["scratch"][k].append(accuracy(model, test_loader, device))
            if "probe" in methods:
                if test_feats is None:
                    test_feats = extract_features(source, test_loader, device)
                train_loader = make_loader(train, EVAL_BATCH, device)
                train_feats = extract_features(source, train_loader, device)
                results["probe"][k].append(sklearn_probe(train_feats, test_feats)[1])
            if "random_probe" in methods:
                seed_everything(seed)
                random_cnn = DigitCNN(num_classes=len(TARGET_CLASSES))
                probe = [extract_features(random_cnn, make_loader(d, EVAL_BATCH, device), device)
                         for d in (train, target.test)]
                results["random_probe"][k].append(sklearn_probe(*probe)[1])
            if "pixels" in methods:
                results["pixels"][k].append(
                    sklearn_probe(_pixels(train), _pixels(target.test))[1])
            if "finetune" in methods:
                model = train_finetune(source, train, device, steps, seed)
                results["finetune"][k].append(accuracy(model, test_loader, device))
            if progress is not None:
                progress(f"k={k} seed={seed} done")
    return results


def summarise(
    results: dict[str, dict[int, list[float]]],
) -> dict[str, dict[int, tuple[float, float]]]:
    """Mean and standard deviation over seeds for every method and k."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for method, by_k in results.items():
        out[method] = {}
        for k, values in by_k.items():
            t = torch.tensor(values, dtype=torch.float64)
            std = t.std(unbiased=True).item() if len(values) > 1 else 0.0
            out[method][k] = (t.mean().item(), std)
    return out


def results_table(results: dict[str, dict[int, list[float]]]) -> str:
    """A Markdown table: one row per k, one column per method, mean +- std."""
    summary = summarise(results)
    methods = list(summary)
    ks = list(next(iter(summary.values())))
    lines = ["| labels per class | " + " | ".join(methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for k in ks:
        cells = [f"{summary[m][k][0]:.3f} ± {summary[m][k][1]:.3f}" for m in methods]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

