import math

import pytest
import torch

from tl_course.exercises import (
    NOT_ATTEMPTED,
    attempted,
    check_accuracy_fn,
    check_best_regulariser,
    check_derivative,
    check_mlp_parameters,
    feedback,
)

RESULTS = {"none": 0.90, "dropout": 0.95, "weight_decay": 0.93}
MLP_PARAMS = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10  # weights + biases per layer


def grad_at_solution(f, x):
    t = torch.tensor(x, requires_grad=True)
    f(t).backward()
    return t.grad.item()


def accuracy_solution(logits, labels):
    return (logits.argmax(dim=1) == labels).float().mean()


def _raise(*args):
    raise RuntimeError("learner bug")


CHECKS = [
    (check_derivative, (), grad_at_solution),
    (check_accuracy_fn, (), accuracy_solution),
    (check_mlp_parameters, (), MLP_PARAMS),
    (check_best_regulariser, (RESULTS,), "dropout"),
]


def _verdict(capsys) -> str:
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    return out


@pytest.mark.parametrize(("check", "extra", "answer"), CHECKS)
def test_correct_answer(check, extra, answer, capsys):
    assert check(answer, *extra) is True
    assert _verdict(capsys).startswith("[correct]")


@pytest.mark.parametrize(("check", "extra", "answer"), CHECKS)
@pytest.mark.parametrize("placeholder", [..., None])
def test_not_attempted(check, extra, answer, placeholder, capsys):
    assert check(placeholder, *extra) is False
    out = _verdict(capsys)
    assert out.startswith("[todo]") and NOT_ATTEMPTED in out


def test_attempted_and_feedback(capsys):
    assert attempted(0) is True and attempted("") is True
    assert capsys.readouterr().out == ""
    assert feedback(True, "yes", "no") is True
    assert feedback(False, "yes", "no") is False
    assert capsys.readouterr().out.splitlines() == ["[correct] yes", "[not yet] no"]


# ----------------------------------------------------------------- check_derivative


def test_derivative_wrong_answer_gets_a_hint(capsys):
    value_not_slope = lambda f, x: float(f(torch.tensor(x)))
    assert check_derivative(value_not_slope) is False
    out = _verdict(capsys)
    assert out.startswith("[not yet]") and "requires_grad" in out and "expected" in out


def test_derivative_learner_code_raising_is_feedback(capsys):
    assert check_derivative(_raise) is False
    out = _verdict(capsys)
    assert "RuntimeError" in out and "learner bug" in out and "grad_at" in out


def test_derivative_returning_a_non_number(capsys):
    assert check_derivative(lambda f, x: "two") is False
    assert _verdict(capsys).startswith("[not yet]")


def test_derivative_nan_is_not_correct(capsys):
    assert check_derivative(lambda f, x: math.nan) is False
    assert _verdict(capsys).startswith("[not yet]")


# ----------------------------------------------------------------- check_accuracy_fn


def test_accuracy_counting_instead_of_averaging(capsys):
    count = lambda logits, labels: (logits.argmax(1) == labels).float().sum()
    assert check_accuracy_fn(count) is False
    assert _verdict(capsys).startswith("[not yet]")


def test_accuracy_above_one_gets_the_divide_hint(capsys):
    percent = lambda logits, labels: 100 * accuracy_solution(logits, labels)
    assert check_accuracy_fn(percent) is False
    assert "divide by the number of examples" in _verdict(capsys)


def test_accuracy_constant_answer(capsys):
    assert check_accuracy_fn(lambda logits, labels: 0.5) is False
    out = _verdict(capsys)
    assert "argmax" in out and "expected" in out


def test_accuracy_learner_code_raising_is_feedback(capsys):
    wrong_dim = lambda logits, labels: (logits.argmax(0) == labels).float().mean()
    assert check_accuracy_fn(wrong_dim) is False
    assert "accuracy_fn raised" in _verdict(capsys)
    assert check_accuracy_fn(_raise) is False
    assert "RuntimeError" in _verdict(capsys)


def test_accuracy_nan_is_not_correct(capsys):
    assert check_accuracy_fn(lambda logits, labels: math.nan) is False
    assert _verdict(capsys).startswith("[not yet]")


# ----------------------------------------------------------------- check_mlp_parameters


def test_mlp_parameters_forgot_biases(capsys):
    assert check_mlp_parameters(784 * 256 + 256 * 128 + 128 * 10) is False
    assert "biases" in _verdict(capsys)


def test_mlp_parameters_far_off(capsys):
    assert check_mlp_parameters(1000) is False
    assert "784" in _verdict(capsys)


def test_mlp_parameters_other_hidden_sizes(capsys):
    assert check_mlp_parameters(784 * 32 + 32 + 32 * 10 + 10, hidden=(32,)) is True
    assert check_mlp_parameters(MLP_PARAMS, hidden=(32,)) is False


@pytest.mark.parametrize("answer", ["lots", [1, 2], math.nan, math.inf, MLP_PARAMS + 0.7])
def test_mlp_parameters_not_a_whole_number(answer, capsys):
    assert check_mlp_parameters(answer) is False
    assert _verdict(capsys).startswith("[not yet]")


def test_mlp_parameters_accepts_tensor_and_numeric_string(capsys):
    assert check_mlp_parameters(torch.tensor(MLP_PARAMS)) is True
    assert check_mlp_parameters(str(MLP_PARAMS)) is True


# ----------------------------------------------------------------- check_best_regulariser


def test_best_regulariser_wrong_choice(capsys):
    assert check_best_regulariser("none", RESULTS) is False
    out = _verdict(capsys)
    assert "'none'" in out and "0.900" in out


def test_best_regulariser_unknown_key_lists_keys(capsys):
    assert check_best_regulariser("l1", RESULTS) is False
    out = _verdict(capsys)
    for key in RESULTS:
        assert repr(key) in out


def test_best_regulariser_wrong_choice_other_tables(capsys):
    table = {"plain": 0.81, "augment": 0.87, "dropout": 0.84}
    assert check_best_regulariser("dropout", table) is False
    _verdict(capsys)
    assert check_best_regulariser("augment", table) is True
    out = _verdict(capsys)
    assert out.startswith("[correct]") and "tied" not in out and "0.870" in out


@pytest.mark.parametrize("answer", ["dropout", "augment"])
def test_best_regulariser_tie_accepts_each_tied_name(answer, capsys):
    table = {"plain": 0.90, "dropout": 0.95, "augment": 0.95}
    assert check_best_regulariser(answer, table) is True
    out = _verdict(capsys)
    other = "augment" if answer == "dropout" else "dropout"
    assert out.startswith("[correct]") and "tied" in out and repr(other) in out
    assert "0.950" in out
    assert check_best_regulariser("plain", table) is False
    assert _verdict(capsys).startswith("[not yet]")


def test_best_regulariser_tie_within_rounding(capsys):
    """0.1 + 0.2 and 0.3 differ by one ulp: the same accuracy, computed two ways."""
    table = {"a": 0.1 + 0.2, "b": 0.3, "c": 0.2}
    assert table["a"] != table["b"]
    assert check_best_regulariser("b", table) is True
    assert "tied with 'a'" in _verdict(capsys)
    assert check_best_regulariser("a", table) is True
    assert "tied with 'b'" in _verdict(capsys)


def test_best_regulariser_three_way_tie_names_the_others(capsys):
    table = {"x": 0.5, "y": 0.5, "z": 0.5}
    assert check_best_regulariser("y", table) is True
    out = _verdict(capsys)
    assert "'x'" in out and "'z'" in out


def test_best_regulariser_near_tie_is_not_a_tie(capsys):
    table = {"a": 0.95, "b": 0.95 + 1e-9}
    assert check_best_regulariser("a", table) is False
    assert _verdict(capsys).startswith("[not yet]")
    assert check_best_regulariser("b", table) is True
    assert "tied" not in _verdict(capsys)


@pytest.mark.parametrize("answer", [["dropout"], {"dropout"}, {"a": 1}])
def test_best_regulariser_unhashable_answer_does_not_raise(answer, capsys):
    assert check_best_regulariser(answer, RESULTS) is False
    assert _verdict(capsys).startswith("[not yet]")
