"""Every check of notebooks 02 and 03: right, wrong (with a hint), not attempted, never raises."""

import copy

import pytest
import torch

from tl_course.exercises import NOT_ATTEMPTED
from tl_course.exercises.nb02 import (
    check_frozen_body,
    check_nearest_centroid,
    check_transfer_gap,
)
from tl_course.exercises.nb03 import (
    check_discriminative_groups,
    check_last_block_only,
    check_negative_transfer,
)
from tl_course.models import DigitCNN, freeze_body, param_groups, set_trainable, unfreeze_all

RESULTS = {"scratch": {10: [0.5, 0.7], 1: [0.2]}, "finetune": {10: [0.8, 0.9], 1: [0.4]}}
GAP = 0.85 - 0.6
ACCURACIES = {"scratch": 0.80, "mnist": 0.90, "scrambled": 0.70}
NONE_WORSE = {"scratch": 0.50, "mnist": 0.90}


def _model() -> DigitCNN:
    torch.manual_seed(0)
    return DigitCNN(num_classes=5, width=4)


def nearest_centroid(train_x, train_y, test_x):
    means = torch.stack([train_x[train_y == c].mean(0) for c in torch.unique(train_y)])
    return torch.cdist(test_x, means).argmin(1)


def _raise(*args, **kwargs):
    raise RuntimeError("learner bug")


# The notebooks' solution cells, on the real digit model (DigitCNN(num_classes=5)).
def frozen_body_solution(source_cnn):
    my_frozen = copy.deepcopy(source_cnn).reset_head(5)
    my_frozen.blocks.requires_grad_(False)
    my_frozen.frozen_bn = set(my_frozen.blocks.keys())  # BatchNorm statistics stay fixed too
    return my_frozen


def frozen_body_old_solution(source_cnn):
    my_frozen = copy.deepcopy(source_cnn).reset_head(5)
    my_frozen.blocks.requires_grad_(False)
    return my_frozen


def last_block_solution(start_model):
    last_block_model = start_model()
    last_block_model.blocks.requires_grad_(False)
    last_block_model.blocks["block2"].requires_grad_(True)
    last_block_model.frozen_bn = {"block1"}  # block1's BatchNorm statistics stay fixed too
    return last_block_model


def last_block_old_solution(start_model):
    last_block_model = start_model()
    last_block_model.blocks.requires_grad_(False)
    last_block_model.blocks["block2"].requires_grad_(True)
    return last_block_model


def _source_cnn() -> DigitCNN:
    torch.manual_seed(0)
    return DigitCNN(num_classes=5)


def _snapshot(model):
    """Everything a check could disturb: parameters, buffers, flags, frozen_bn."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            set(model.frozen_bn))


def _assert_unchanged(model, snapshot):
    state, training, grads, frozen_bn = _snapshot(model)
    assert state.keys() == snapshot[0].keys()
    for k in state:
        assert torch.equal(state[k], snapshot[0][k]), k
    assert training == snapshot[1]
    assert grads == snapshot[2]
    assert frozen_bn == snapshot[3]


# One row per check: (check, extra args, factory of a correct answer).
CHECKS = [
    (check_frozen_body, (), lambda: freeze_body(_model())),
    (check_nearest_centroid, (), lambda: nearest_centroid),
    (check_transfer_gap, (RESULTS,), lambda: GAP),
    (check_last_block_only, (), lambda: set_trainable(_model(), ["block2"], bn="frozen")),
    (check_discriminative_groups, (_model(),), None),  # needs the same model: see below
    (check_negative_transfer, (ACCURACIES,), lambda: "scrambled"),
]
IDS = [c[0].__name__ for c in CHECKS]


def _groups_case():
    model = unfreeze_all(_model())
    return param_groups(model, lr=1e-3, decay=0.5), model


def _correct(check, extra, factory):
    if check is check_discriminative_groups:
        groups, model = _groups_case()
        return groups, (model,)
    return factory(), extra


def _verdict(capsys) -> str:
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    return out


def _not_yet(capsys, *words: str) -> str:
    out = _verdict(capsys)
    assert out.startswith("[not yet]"), out
    for word in words:
        assert word in out, out
    return out


# ----------------------------------------------------------------- common behaviour


@pytest.mark.parametrize(("check", "extra", "factory"), CHECKS, ids=IDS)
def test_correct_answer(check, extra, factory, capsys):
    answer, extra = _correct(check, extra, factory)
    assert check(answer, *extra) is True
    assert _verdict(capsys).startswith("[correct]")


@pytest.mark.parametrize(("check", "extra", "factory"), CHECKS, ids=IDS)
@pytest.mark.parametrize("placeholder", [..., None])
def test_not_attempted(check, extra, factory, placeholder, capsys):
    _, extra = _correct(check, extra, factory)
    assert check(placeholder, *extra) is False
    out = _verdict(capsys)
    assert out.startswith("[todo]") and NOT_ATTEMPTED in out


@pytest.mark.parametrize(("check", "extra", "factory"), CHECKS, ids=IDS)
@pytest.mark.parametrize("junk", [42, "a string", [1, 2], {"x": 1}, object(), _raise])
def test_wrong_types_never_raise(check, extra, factory, junk, capsys):
    _, extra = _correct(check, extra, factory)
    assert check(junk, *extra) is False
    _not_yet(capsys)


# ----------------------------------------------------------------- 02.1 check_frozen_body


def test_frozen_body_nothing_frozen(capsys):
    assert check_frozen_body(_model()) is False
    _not_yet(capsys, "body parameters still trainable", "requires_grad_(False)")


def test_frozen_body_everything_frozen(capsys):
    model = _model().requires_grad_(False)
    assert check_frozen_body(model) is False
    _not_yet(capsys, "nothing is trainable")


def test_frozen_body_part_of_the_head_frozen(capsys):
    model = freeze_body(_model())
    model.head[-1].bias.requires_grad_(False)
    assert check_frozen_body(model) is False
    _not_yet(capsys, "head")


def test_frozen_body_one_block_left_trainable(capsys):
    model = set_trainable(_model(), ["block1"])
    assert check_frozen_body(model) is False
    _not_yet(capsys, "block1")


def test_frozen_body_reports_head_size(capsys):
    model = freeze_body(_model())
    assert check_frozen_body(model) is True
    n = sum(p.numel() for p in model.head.parameters())
    assert f"{n:,}" in _verdict(capsys)


def test_frozen_body_bn_still_in_train_mode(capsys):
    """Frozen weights alone: fit's model.train() would still move BatchNorm statistics."""
    model = freeze_body(_model(), bn="train")
    assert not any(p.requires_grad for p in model.blocks.parameters())  # weights are frozen
    assert check_frozen_body(model) is False
    _not_yet(capsys, "BatchNorm", "block1, block2", "running statistics",
             "model.frozen_bn = {'block1', 'block2'}", "freeze_body")


def test_frozen_body_eval_mode_is_not_enough(capsys):
    """model.eval() now does not survive fit's model.train(): frozen_bn is what lasts."""
    model = freeze_body(_model(), bn="train").eval()
    assert check_frozen_body(model) is False
    _not_yet(capsys, "running statistics")


def test_frozen_body_bn_frozen_in_one_block_only(capsys):
    model = freeze_body(_model(), bn="train")
    model.frozen_bn = {"block1"}
    assert check_frozen_body(model) is False
    _not_yet(capsys, "BatchNorm in block2 still")  # block1's statistics are fixed: not blamed


def test_frozen_body_frozen_bn_by_hand_passes(capsys):
    model = freeze_body(_model(), bn="train")
    model.frozen_bn = {"block1", "block2"}
    assert check_frozen_body(model) is True
    assert _verdict(capsys).startswith("[correct]")


def test_frozen_body_solution_on_the_real_digit_model(capsys):
    source_cnn = _source_cnn()
    assert check_frozen_body(frozen_body_solution(source_cnn)) is True
    assert _verdict(capsys).startswith("[correct]")
    assert check_frozen_body(frozen_body_old_solution(source_cnn)) is False
    _not_yet(capsys, "running statistics", "frozen_bn")


def test_frozen_body_infers_input_channels(capsys):
    """A 3-channel model gets a 3-channel probe batch: right answer passes, BN leak fails."""
    model = DigitCNN(num_classes=5, width=4, in_channels=3)
    assert check_frozen_body(freeze_body(model)) is True
    assert check_frozen_body(freeze_body(model, bn="train")) is False
    capsys.readouterr()


@pytest.mark.parametrize("bn", ["train", "frozen"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frozen_body_leaves_the_learners_model_alone(bn, mode, capsys):
    """The check probes a copy: stats, weights, train/eval flags and RNG stay as they were."""
    model = DigitCNN(num_classes=5, width=4, dropout=0.5)
    freeze_body(model, bn=bn)
    model.train(mode == "train")
    before, rng = _snapshot(model), torch.get_rng_state()
    check_frozen_body(model)
    _assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe's dropout drew from a fork
    capsys.readouterr()


# ----------------------------------------------------------------- 02.2 check_nearest_centroid


def test_nearest_centroid_wrong_labels(capsys):
    zeros = lambda train_x, train_y, test_x: torch.zeros(len(test_x), dtype=torch.long)
    assert check_nearest_centroid(zeros) is False
    _not_yet(capsys, "agree", "mean")


def test_nearest_centroid_nearest_neighbour_is_not_centroid(capsys):
    one_nn = lambda train_x, train_y, test_x: train_y[torch.cdist(test_x, train_x).argmin(1)]
    assert check_nearest_centroid(one_nn) is False
    _not_yet(capsys, "agree")


def test_nearest_centroid_wrong_shape(capsys):
    assert check_nearest_centroid(lambda a, b, c: torch.zeros(3, dtype=torch.long)) is False
    _not_yet(capsys, "one label per test row", "50")


def test_nearest_centroid_accepts_lists_and_numpy(capsys):
    as_list = lambda a, b, c: nearest_centroid(a, b, c).tolist()
    as_numpy = lambda a, b, c: nearest_centroid(a, b, c).numpy()
    assert check_nearest_centroid(as_list) is True
    assert check_nearest_centroid(as_numpy) is True


def test_nearest_centroid_learner_code_raising(capsys):
    assert check_nearest_centroid(_raise) is False
    _not_yet(capsys, "RuntimeError", "learner bug")


# ----------------------------------------------------------------- 02.3 check_transfer_gap


def test_transfer_gap_sign_flipped(capsys):
    assert check_transfer_gap(-GAP, RESULTS) is False
    _not_yet(capsys, "sign")


def test_transfer_gap_not_averaged(capsys):
    last_seed = 0.9 - 0.7
    assert check_transfer_gap(last_seed, RESULTS) is False
    _not_yet(capsys, "average")


def test_transfer_gap_other_k(capsys):
    assert check_transfer_gap(0.2, RESULTS, k=1) is True
    capsys.readouterr()
    assert check_transfer_gap(GAP, RESULTS, k=1) is False


def test_transfer_gap_accepts_numeric_types(capsys):
    assert check_transfer_gap(torch.tensor(GAP, dtype=torch.float64), RESULTS) is True
    assert check_transfer_gap(str(GAP), RESULTS) is True


def test_transfer_gap_non_number(capsys):
    assert check_transfer_gap("big", RESULTS) is False
    _not_yet(capsys, "number")


# ----------------------------------------------------------------- 03.1 check_last_block_only


def test_last_block_only_everything_trainable(capsys):
    assert check_last_block_only(unfreeze_all(_model())) is False
    _not_yet(capsys, "block1", "block2")


def test_last_block_only_wrong_block(capsys):
    assert check_last_block_only(set_trainable(_model(), ["block1"])) is False
    _not_yet(capsys, "['block1']", "['block2']")


def test_last_block_only_nothing_in_the_body(capsys):
    assert check_last_block_only(freeze_body(_model())) is False
    _not_yet(capsys, "[]")


def test_last_block_only_head_frozen(capsys):
    model = set_trainable(_model(), ["block2"], head=False)
    assert check_last_block_only(model) is False
    _not_yet(capsys, "head")


def test_last_block_only_bn_still_in_train_mode(capsys):
    model = set_trainable(_model(), ["block2"], bn="train")
    assert check_last_block_only(model) is False
    # Only block1 is named: block2 trains, so its statistics may move.
    _not_yet(capsys, "BatchNorm in block1 still", "running statistics",
             "model.frozen_bn = {'block1'}", "unfreeze_from")


def test_last_block_only_frozen_bn_by_hand_passes(capsys):
    model = set_trainable(_model(), ["block2"], bn="train")
    model.frozen_bn = {"block1"}
    assert check_last_block_only(model) is True
    assert _verdict(capsys).startswith("[correct]")


def test_last_block_only_bn_of_the_trained_block_may_be_frozen_too(capsys):
    model = set_trainable(_model(), ["block2"], bn="train")
    model.frozen_bn = {"block1", "block2"}
    assert check_last_block_only(model) is True
    capsys.readouterr()


def test_last_block_only_solution_on_the_real_digit_model(capsys):
    source_cnn = _source_cnn()

    def start_model():
        torch.manual_seed(0)
        return copy.deepcopy(source_cnn).reset_head(5)

    assert check_last_block_only(last_block_solution(start_model)) is True
    assert _verdict(capsys).startswith("[correct]")
    assert check_last_block_only(last_block_old_solution(start_model)) is False
    _not_yet(capsys, "block1", "running statistics", "frozen_bn")


@pytest.mark.parametrize("bn", ["train", "frozen"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_last_block_only_leaves_the_learners_model_alone(bn, mode, capsys):
    model = DigitCNN(num_classes=5, width=4, dropout=0.5)
    set_trainable(model, ["block2"], bn=bn)
    model.train(mode == "train")
    before, rng = _snapshot(model), torch.get_rng_state()
    check_last_block_only(model)
    _assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    capsys.readouterr()


# ----------------------------------------------------------------- 03.2 check_discriminative_groups


def test_groups_all_the_same_lr(capsys):
    model = _model()
    groups = [{"params": list(model.head.parameters()), "lr": 1e-3}]
    groups += [{"params": list(b.parameters()), "lr": 1e-3} for b in model.blocks.values()]
    assert check_discriminative_groups(groups, model) is False
    _not_yet(capsys, "learning rates are off")


def test_groups_decay_the_wrong_way(capsys):
    model = _model()
    groups = [{"params": list(model.head.parameters()), "lr": 1e-3}]
    groups += [{"params": list(b.parameters()), "lr": 1e-3 * 0.5**d}
               for d, b in enumerate(model.blocks.values(), start=1)]  # first block fastest
    assert check_discriminative_groups(groups, model) is False
    _not_yet(capsys, "learning rates are off")


def test_groups_missing_the_head(capsys):
    groups, model = _groups_case()
    assert check_discriminative_groups(groups[1:], model) is False
    _not_yet(capsys, "exactly one group")


def test_groups_with_a_parameter_twice(capsys):
    """An optimizer refuses a parameter in two groups, so the check must too."""
    groups, model = _groups_case()
    groups = groups + [{"params": list(model.head.parameters()), "lr": 1e-3}]
    with pytest.raises(ValueError, match="more than one"):
        torch.optim.SGD([dict(g) for g in groups])
    assert check_discriminative_groups(groups, model) is False
    _not_yet(capsys, "exactly one group")


def test_groups_other_lr_and_decay(capsys):
    model = unfreeze_all(_model())
    groups = param_groups(model, lr=0.1, decay=0.3)
    assert check_discriminative_groups(groups, model, lr=0.1, decay=0.3) is True
    capsys.readouterr()
    assert check_discriminative_groups(groups, model) is False  # lr=1e-3, decay=0.5


def test_groups_accept_generators(capsys):
    model = _model()
    groups = [{"params": model.head.parameters(), "lr": 1e-3}]
    groups += [{"params": b.parameters(), "lr": 1e-3 * 0.5**d}
               for d, b in enumerate(reversed(list(model.blocks.values())), start=1)]
    assert check_discriminative_groups(groups, model) is True


def test_groups_missing_lr_key(capsys):
    groups, model = _groups_case()
    del groups[0]["lr"]
    assert check_discriminative_groups(groups, model) is False
    _not_yet(capsys, "KeyError")


# ----------------------------------------------------------------- 03.3 check_negative_transfer


def test_negative_transfer_not_below_scratch(capsys):
    assert check_negative_transfer("mnist", ACCURACIES) is False
    _not_yet(capsys, "not below scratch")


def test_negative_transfer_scratch_itself(capsys):
    assert check_negative_transfer("scratch", ACCURACIES) is False
    _not_yet(capsys)


def test_negative_transfer_none_when_something_is_worse(capsys):
    assert check_negative_transfer("none", ACCURACIES) is False
    _not_yet(capsys)


def test_negative_transfer_unknown_name(capsys):
    assert check_negative_transfer("imagenet", ACCURACIES) is False
    _not_yet(capsys, "scratch", "mnist", "scrambled", "none")


def test_negative_transfer_when_nothing_is_worse(capsys):
    assert check_negative_transfer("none", NONE_WORSE) is True
    assert _verdict(capsys).startswith("[correct]")
    assert check_negative_transfer("mnist", NONE_WORSE) is False
    _not_yet(capsys, "none")
