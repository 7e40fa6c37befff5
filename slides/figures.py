"""The slides' result plots, drawn by the course's own helpers.

Every figure is drawn by `tl_course` (data, models, training, plots) in the profile given
and is stamped with that profile and device, so a figure on a slide always says how big
the run behind it was. The default is `cpu`, the profile the decks teach from (minutes on
a laptop); `smoke` draws the same figures in seconds, offline, too small to read results
from (the tests use it).

    python slides/figures.py --out slides/_build/figures [--profile cpu|smoke|gpu] [NAME ...]

`build.py` calls `make_figures` before it renders the decks. Numbers quoted in a deck's
text come from the benchmark (`{{metric:...}}`, see build.py), not from these runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import tl_course as tlc  # noqa: E402

FigureFn = Callable[["Context"], plt.Figure]
FIGURES: dict[str, FigureFn] = {}


class Context:
    """What every figure needs: profile, device, and data loaded once and shared."""

    def __init__(self, profile: tlc.profile.Profile, device: torch.device):
        self.profile, self.device = profile, device
        self._cache: dict[str, object] = {}

    def once(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def digits(self) -> tlc.DigitsData:
        return self.once("digits", lambda: tlc.load_digits("mnist", self.profile))

    @property
    def split(self):
        return self.once("split", lambda: tlc.transfer.digit_split(self.digits))

    @property
    def source_cnn(self):
        return self.once("source_cnn", lambda: tlc.transfer.source_model(
            self.profile, self.device, self.split[0]))

    def epochs(self, factor: float) -> int:
        """Epochs for a figure: `factor` times the profile's (smoke's 2 are too few to teach)."""
        return self.profile.scaled_epochs(factor)

    @property
    def steps(self) -> int:
        """Gradient steps of one small-data run (at least 30, so curves are not noise)."""
        return max(30, self.profile.small_steps)

    def loader(self, ds, shuffle: bool = False, batch_size: int | None = None):
        size = batch_size or (self.profile.batch_size if shuffle else 512)
        return tlc.make_loader(ds, size, self.device, shuffle=shuffle, seed=0)


def figure(name: str) -> Callable[[FigureFn], FigureFn]:
    """Register a figure function under the file name it is saved as (NN_name.png)."""
    def register(fn: FigureFn) -> FigureFn:
        FIGURES[name] = fn
        return fn
    return register


# --------------------------------------------------------------------------- 01


@figure("01_digits")
def digits_grid(ctx: Context) -> plt.Figure:
    x, y = ctx.digits.train.tensors
    fig, ax = plt.subplots(figsize=(9, 1.9))
    tlc.plots.show_images(x[:16], y[:16], ax=ax, nrow=16, title=ctx.digits.source)
    return fig


@figure("01_mlp_vs_cnn")
def mlp_vs_cnn(ctx: Context) -> plt.Figure:
    dev = ctx.device
    train, test = ctx.loader(ctx.digits.train, shuffle=True), ctx.loader(ctx.digits.test)
    tlc.seed_everything(0)
    mlp = tlc.models.MLP(hidden=(256, 128))
    epochs = ctx.epochs(3)
    h_mlp = tlc.fit(mlp, train, test, epochs=epochs, device=dev, lr=1e-3, progress=False)
    tlc.seed_everything(0)
    cnn = tlc.models.DigitCNN(dropout=0.3)
    opt = torch.optim.AdamW(cnn.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs)
    h_cnn = tlc.fit(cnn, train, test, epochs=epochs, device=dev, optimizer=opt,
                    scheduler=sched, progress=False)
    ctx._cache["cnn"] = cnn
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    tlc.plots.plot_history(h_mlp, "acc", ax=axes[0], label="MLP")
    tlc.plots.plot_history(h_cnn, "acc", ax=axes[0], label="CNN")
    axes[0].set_title(f"accuracy (MLP {tlc.count_parameters(mlp):,} params, "
                      f"CNN {tlc.count_parameters(cnn):,})", fontsize=10)
    tlc.plots.plot_history(h_mlp, "loss", ax=axes[1], label="MLP")
    tlc.plots.plot_history(h_cnn, "loss", ax=axes[1], label="CNN")
    axes[1].set_title("loss", fontsize=10)
    return fig


@figure("01_overfitting")
def overfitting(ctx: Context) -> plt.Figure:
    p, dev = ctx.profile, ctx.device
    pool, val = tlc.data.split(ctx.digits.train, val_fraction=0.3, seed=0)
    tiny = tlc.data.subset(pool, p.tiny_size, seed=0)
    tlc.seed_everything(0)
    mlp = tlc.models.MLP(hidden=(512, 256))
    hist = tlc.fit(mlp, ctx.loader(tiny, shuffle=True, batch_size=32), ctx.loader(val),
                   epochs=p.scaled_epochs(10), device=dev, lr=1e-3, progress=False)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    tlc.plots.plot_history(hist, "loss", ax=ax, label=f"MLP on {len(tiny)} digits:")
    ax.set_title("train loss falls, validation loss turns back up", fontsize=10)
    return fig


@figure("01_filters")
def filters(ctx: Context) -> plt.Figure:
    if "cnn" not in ctx._cache:
        mlp_vs_cnn(ctx)
    cnn = ctx._cache["cnn"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    tlc.plots.plot_filters(cnn.blocks["block1"][0].weight, ax=ax, nrow=16)
    return fig


# --------------------------------------------------------------------------- 02


@figure("02_split")
def split_digits(ctx: Context) -> plt.Figure:
    source, target = ctx.split
    fig, axes = plt.subplots(2, 1, figsize=(9, 2.6))
    tlc.plots.show_images(source.train.tensors[0][:16], ax=axes[0], nrow=16,
                          title="source task: digits 0-4")
    tlc.plots.show_images(target.train.tensors[0][:16], ax=axes[1], nrow=16,
                          title="target task: digits 5-9 (new classes)")
    return fig


@figure("02_label_efficiency")
def label_efficiency(ctx: Context) -> plt.Figure:
    p, target = ctx.profile, ctx.split[1]
    # Notebook 02's section 5 at seed 0: its k, and scratch's learning rate picked on
    # validation digits (never the test set), so the plot matches the benchmark's numbers.
    ks = [1, 4, 16] if p.name == "smoke" else [1, 5, 10, 25, 50]
    seeds = list(range(max(2, p.seeds)))
    pool, val = tlc.data.split(target.train, val_fraction=0.2, seed=seeds[0])
    sweep_train = tlc.data.per_class_subset(pool, 10, seed=seeds[0])
    scratch_lr, _ = tlc.transfer.tune_scratch_lr(sweep_train, val, ctx.device, ctx.steps,
                                                 seeds=seeds[:1])
    results = tlc.transfer.label_efficiency(ctx.source_cnn, target, ks, seeds, ctx.device,
                                            ctx.steps, scratch_lr=scratch_lr)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    tlc.plots.plot_label_efficiency(results, ax=ax)
    ax.set_title(f"digits 5-9 with k labels per class ({len(seeds)} seeds, "
                 f"scratch lr {scratch_lr:g} chosen on validation)", fontsize=10)
    return fig


@figure("02_embedding")
def embedding(ctx: Context) -> plt.Figure:
    target_test = ctx.split[1].test
    n = min(300, len(target_test))
    test = torch.utils.data.TensorDataset(*(t[:n] for t in target_test.tensors))
    tlc.seed_everything(0)
    random_cnn = tlc.models.DigitCNN(num_classes=5)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, model, title in ((axes[0], random_cnn, "random CNN features"),
                             (axes[1], ctx.source_cnn, "features trained on 0-4")):
        feats = tlc.features.extract_features(model, ctx.loader(test), ctx.device)
        coords = tlc.features.embed_2d(feats, "tsne")
        tlc.plots.plot_embedding(coords, feats.y, ax=ax, title=f"{title}: digits 5-9",
                                 names=[str(c) for c in range(5, 10)])
    return fig


# --------------------------------------------------------------------------- 03


@figure("03_fine_tune")
def fine_tune(ctx: Context) -> plt.Figure:
    import copy

    dev = ctx.device
    target = ctx.split[1]
    small = tlc.data.per_class_subset(target.train, 20, seed=0)
    train, val = ctx.loader(small, shuffle=True, batch_size=32), ctx.loader(target.test)
    epochs = tlc.transfer.steps_to_epochs(len(small), 32, ctx.steps)
    runs = {}
    tlc.seed_everything(0)
    frozen = copy.deepcopy(ctx.source_cnn).reset_head(5)
    tlc.models.freeze_body(frozen)
    runs["frozen body, new head"] = tlc.fit(frozen, train, val, epochs=epochs + 1, device=dev,
                                            lr=2e-3, progress=False)
    tlc.seed_everything(0)
    tuned = copy.deepcopy(ctx.source_cnn).reset_head(5)
    runs["fine_tune (head, then all)"] = tlc.transfer.fine_tune(tuned, train, val, dev,
                                                                epochs=epochs)
    tlc.seed_everything(0)
    scratch = tlc.models.DigitCNN(num_classes=5)
    runs["from scratch"] = tlc.fit(scratch, train, val, epochs=epochs + 1, device=dev,
                                   lr=3e-3, progress=False)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, hist in runs.items():
        ax.plot(range(1, hist.epochs + 1), hist["val_acc"], marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel="target test accuracy",
           title=f"digits 5-9, {len(small)} labelled images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------- 04


@figure("04_domains")
def domains(ctx: Context) -> plt.Figure:
    pair = ctx.once("mnist_m", lambda: tlc.domains.load_domains("mnist_m", ctx.profile))
    fig, axes = plt.subplots(2, 1, figsize=(9, 2.6))
    tlc.plots.show_images(pair.source.test.tensors[0][:12], nrow=12, ax=axes[0],
                          title="source: MNIST")
    tlc.plots.show_images(pair.target.test.tensors[0][:12], nrow=12, ax=axes[1],
                          title="target: MNIST-M (the same digits on photo patches)")
    return fig


@figure("04_shift")
def shift(ctx: Context) -> plt.Figure:
    """Source-only training with notebook 04's recipe (its network, optimiser and epochs).

    Only the shift is drawn here: whether AdaBN, CORAL or DANN repair it is a result the
    deck quotes from the benchmark over seeds, next to this baseline.
    """
    pair = ctx.once("mnist_m", lambda: tlc.domains.load_domains("mnist_m", ctx.profile))
    result = tlc.adapt.run_method("source_only", pair, ctx.profile, ctx.device, seed=0)
    acc = {"MNIST\n(source)": result.source_acc, "MNIST-M\n(target)": result.target_acc}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bars = ax.bar(list(acc), list(acc.values()), color=["#4477aa", "#cc6677"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylim=(0, 1.05), ylabel="test accuracy",
           title=f"source-only: trained on {len(pair.source.train)} MNIST digits, seed 0")
    return fig


# --------------------------------------------------------------------------- 05


@figure("05_multimnist")
def multimnist(ctx: Context) -> plt.Figure:
    data = tlc.multimnist.load_multimnist(ctx.profile, seed=0)
    images, labels = data.train[:12]
    fig, ax = plt.subplots(figsize=(9, 1.9))
    pairs = "  ".join(f"{int(a)}{int(b)}" for a, b in zip(labels["left"], labels["right"],
                                                           strict=True))
    tlc.plots.show_images(images, nrow=12, ax=ax, title="left / right: " + pairs)
    return fig


# --------------------------------------------------------------------------- driver


def stamp(fig: plt.Figure, ctx: Context) -> None:
    """Write where the figure came from in its bottom-right corner."""
    fig.text(0.995, 0.005, f"tl_course · profile {ctx.profile.name} · device {ctx.device.type}",
             ha="right", va="bottom", fontsize=7, color="0.45")


def make_figures(out: Path, profile: str = "cpu", only: list[str] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Path]:
    """Draw every registered figure (or those in `only`) into `out` as PNG files."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(tlc.get_profile(profile), tlc.get_device())
    written: dict[str, Path] = {}
    for name, fn in FIGURES.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        fig = fn(ctx)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        stamp(fig, ctx)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path
        log(f"  figure {name}.png ({time.perf_counter() - start:.1f} s)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "_build" / "figures")
    parser.add_argument("--profile", default="cpu", choices=tlc.profile.profile_names(),
                        help="sizes of the runs behind the figures (default: cpu)")
    parser.add_argument("names", nargs="*", help="only these figures (default: all)")
    args = parser.parse_args(argv)
    make_figures(args.out, args.profile, args.names or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
