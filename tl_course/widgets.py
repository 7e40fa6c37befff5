"""A small ipywidgets panel: pick settings, press Train, watch the curves.

Works in JupyterLab and in Colab (with the custom widget manager the install cell
enables). Headless runs (nbval, `tl-course run`) cannot press buttons, so notebook 03
calls `panel.run()` once with the default settings: the same code path as a click.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .train import History


class TrainingPanel:
    """Controls + a Train button + an output area that shows the run's curves."""

    def __init__(self, train_fn: Callable[..., History], controls: Mapping[str, Any],
                 title: str = "Train"):
        import ipywidgets as w

        self.train_fn = train_fn
        self.controls = dict(controls)
        self.button = w.Button(description=title, button_style="primary", icon="play")
        self.output = w.Output()
        self.button.on_click(lambda _: self.run())
        self.box = w.VBox([*self.controls.values(), self.button, self.output])
        self.history: History | None = None

    def values(self) -> dict[str, Any]:
        """The current setting of every control, by name."""
        return {name: c.value for name, c in self.controls.items()}

    def run(self, **overrides: Any) -> History:
        """Train with the controls' values (overridden by keyword), draw the curves."""
        import matplotlib.pyplot as plt

        from .plots import plot_history

        settings = {**self.values(), **overrides}
        self.button.disabled = True
        try:
            history = self.train_fn(**settings)
        finally:
            self.button.disabled = False
        self.history = history
        with self.output:
            self.output.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
            plot_history(history, "loss", ax=axes[0])
            plot_history(history, "acc", ax=axes[1])
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            fig.suptitle(shown, fontsize=9)
            plt.tight_layout()
            plt.show()
            print(history.summary())
        return history

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)
