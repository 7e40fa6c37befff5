import ipywidgets as w
import matplotlib.pyplot as plt
import pytest

from tl_course.train import History
from tl_course.widgets import TrainingPanel


def small_history(epochs: int = 2) -> History:
    h = History()
    for e in range(epochs):
        h.add("train_loss", 1.0 / (e + 1))
        h.add("val_loss", 1.2 / (e + 1))
        h.add("train_acc", 0.5 + 0.1 * e)
        h.add("val_acc", 0.4 + 0.1 * e)
        h.add("seconds", 0.01)
    return h


class FakeTrain:
    """Records every call and checks the button is disabled while it runs."""

    def __init__(self):
        self.calls: list[dict] = []
        self.panel: TrainingPanel | None = None
        self.disabled_during: list[bool] = []

    def __call__(self, **kwargs) -> History:
        self.calls.append(kwargs)
        if self.panel is not None:
            self.disabled_during.append(self.panel.button.disabled)
        return small_history(kwargs.get("epochs", 2))


@pytest.fixture
def panel_and_fn():
    fn = FakeTrain()
    controls = {
        "epochs": w.IntSlider(value=3, min=1, max=10),
        "lr": w.FloatLogSlider(value=1e-3, base=10, min=-5, max=-1),
        "method": w.Dropdown(options=["scratch", "finetune"], value="finetune"),
    }
    panel = TrainingPanel(fn, controls, title="Go")
    fn.panel = panel
    return panel, fn


def test_values_reflect_the_controls(panel_and_fn):
    panel, _ = panel_and_fn
    assert panel.values() == {"epochs": 3, "lr": pytest.approx(1e-3), "method": "finetune"}
    panel.controls["epochs"].value = 7
    panel.controls["method"].value = "scratch"
    assert panel.values()["epochs"] == 7 and panel.values()["method"] == "scratch"
    assert panel.button.description == "Go"
    assert panel.history is None


def test_run_calls_train_with_the_control_values(panel_and_fn):
    panel, fn = panel_and_fn
    panel.controls["epochs"].value = 4
    history = panel.run()
    assert fn.calls == [{"epochs": 4, "lr": pytest.approx(1e-3), "method": "finetune"}]
    assert panel.history is history and history.epochs == 4
    assert fn.disabled_during == [True]  # no double clicks while training
    assert panel.button.disabled is False


def test_run_overrides_win(panel_and_fn):
    panel, fn = panel_and_fn
    panel.run(lr=0.5, extra="x")
    assert fn.calls[-1] == {"epochs": 3, "lr": 0.5, "method": "finetune", "extra": "x"}
    assert panel.controls["lr"].value == pytest.approx(1e-3)  # controls unchanged


def test_run_draws_the_curves_with_the_settings(panel_and_fn):
    panel, _ = panel_and_fn
    plt.close("all")
    panel.run(epochs=2)
    fig = plt.gcf()
    axes = fig.get_axes()
    assert len(axes) == 2
    assert [ax.get_ylabel() for ax in axes] == ["loss", "acc"]
    assert len(axes[0].get_lines()) == 2  # train and val
    assert "epochs=2" in fig.get_suptitle() and "method=finetune" in fig.get_suptitle()


def test_button_click_triggers_a_run(panel_and_fn):
    panel, fn = panel_and_fn
    panel.button.click()
    assert len(fn.calls) == 1 and fn.calls[0]["epochs"] == 3
    assert isinstance(panel.history, History)
    panel.controls["epochs"].value = 5
    panel.button.click()
    assert len(fn.calls) == 2 and panel.history.epochs == 5


def test_failed_run_re_enables_the_button(panel_and_fn):
    panel, _ = panel_and_fn
    first = panel.run()

    def boom(**kwargs):
        raise RuntimeError("diverged")

    panel.train_fn = boom
    with pytest.raises(RuntimeError, match="diverged"):
        panel.run()
    assert panel.button.disabled is False
    assert panel.history is first  # the last good run is kept


def test_box_holds_controls_button_and_output(panel_and_fn):
    panel, _ = panel_and_fn
    children = list(panel.box.children)
    assert children[:3] == list(panel.controls.values())
    assert children[3] is panel.button and children[4] is panel.output


def test_headless_run_draws_as_cell_output_not_into_the_panel(panel_and_fn, capsys, monkeypatch):
    """`in_panel=False` (what notebook 03 runs headless) trains the same way but never
    captures into the Output widget (nbclient can hang on such captured output)."""
    panel, fn = panel_and_fn
    entered = []
    monkeypatch.setattr(type(panel.output), "__enter__",
                        lambda self: entered.append(True) or self)
    history = panel.run(in_panel=False, epochs=2)
    assert fn.calls == [{"epochs": 2, "lr": pytest.approx(1e-3), "method": "finetune"}]
    assert entered == [] and panel.history is history
    assert history.summary() in capsys.readouterr().out
    plt.close("all")
    panel.run(epochs=2)  # a click's path still draws into the panel
    assert entered, "a click must draw into the panel"
    plt.close("all")
