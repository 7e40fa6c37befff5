"""A small ipywidgets panel: pick settings, press Train, watch the curves.

Works in JupyterLab and in Colab (with the custom widget manager the install cell
enables). Headless runs (nbval, `tl-course run`) cannot press buttons, so notebook 03
calls `panel.run(in_panel=False)` once with the default settings: the same training code
as a click, with the curves drawn as the cell's own output. Drawing into the panel's
`Output` widget from a headless run is what we avoid: nbclient sometimes never receives
the cell's reply after output captured by an Output widget (jupyter/nbclient#312), and the
run hangs until its timeout.
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

    def run(self, in_panel: bool = True, **overrides: Any) -> History:
        """Train with the controls' values (overridden by keyword), draw the curves: in the
        panel's output area (a click), or as ordinary cell output (`in_panel=False`)."""
        settings = {**self.values(), **overrides}
        self.button.disabled = True
        try:
            history = self.train_fn(**settings)
        finally:
            self.button.disabled = False
        self.history = history
        if in_panel:
            with self.output:
                self.output.clear_output(wait=True)
                self._draw(history, settings)
        else:
            self._draw(history, settings)
        return history

    @staticmethod
    def _draw(history: History, settings: Mapping[str, Any]) -> None:
        import matplotlib.pyplot as plt

        from .plots import plot_history

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        plot_history(history, "loss", ax=axes[0])
        plot_history(history, "acc", ax=axes[1])
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        fig.suptitle(shown, fontsize=9)
        plt.tight_layout()
        plt.show()
        print(history.summary())

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)
