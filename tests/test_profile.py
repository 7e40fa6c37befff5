import dataclasses

import pytest
import torch

from tl_course.profile import (
    PROFILE_ENV,
    PROFILES,
    Profile,
    ProfileError,
    default_profile_name,
    get_profile,
    profile_names,
)


def test_profile_names_in_order_of_size():
    assert profile_names() == ["smoke", "cpu", "gpu"]


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_get_profile_by_name(name):
    prof = get_profile(name, env={})
    assert isinstance(prof, Profile)
    assert prof.name == name


def test_name_is_normalised():
    assert get_profile("  SMOKE ", env={}).name == "smoke"


def test_unknown_name_lists_valid_profiles():
    with pytest.raises(ProfileError) as info:
        get_profile("bogus", env={})
    msg = str(info.value)
    assert "bogus" in msg
    for name in ("smoke", "cpu", "gpu"):
        assert name in msg
    assert isinstance(info.value, ValueError)


def test_unknown_name_from_env_says_where_it_came_from():
    with pytest.raises(ProfileError, match=PROFILE_ENV):
        get_profile(env={PROFILE_ENV: "huge"})


def test_env_var_is_respected():
    assert get_profile(env={PROFILE_ENV: "smoke"}).name == "smoke"
    assert get_profile(env={PROFILE_ENV: "gpu"}).name == "gpu"


def test_argument_beats_env_var():
    assert get_profile("cpu", env={PROFILE_ENV: "smoke"}).name == "cpu"


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "gpu")
    assert get_profile().name == "gpu"
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    assert get_profile().name == "smoke"


def test_default_depends_on_cuda():
    assert default_profile_name(True) == "gpu"
    assert default_profile_name(False) == "cpu"


@pytest.mark.parametrize("env", [{}, {PROFILE_ENV: ""}])
def test_unset_or_empty_env_uses_default(env, monkeypatch):
    for available, expected in ((True, "gpu"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        assert default_profile_name() == expected
        assert get_profile(env=env).name == expected


def test_profiles_grow_in_size():
    smoke, cpu, gpu = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]
    assert smoke.train_size < cpu.train_size
    assert gpu.train_size is None  # all of it
    assert smoke.epochs <= cpu.epochs <= gpu.epochs
    # Policy: smoke never downloads and never shows bars; gpu requires the full data.
    assert not smoke.allow_download and not smoke.progress
    assert gpu.require_full and not cpu.require_full


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["smoke"].epochs = 100  # type: ignore[misc]


def test_scaled_epochs():
    prof = dataclasses.replace(PROFILES["cpu"], epochs=6)
    assert prof.scaled_epochs(1.0) == 6
    assert prof.scaled_epochs(0.5) == 3
    assert prof.scaled_epochs(2) == 12
    assert prof.scaled_epochs(0.01) == 1  # never below the minimum
    assert prof.scaled_epochs(0.01, minimum=2) == 2


def test_every_profile_has_a_time_estimate_for_the_same_notebooks():
    keys = {tuple(sorted(p.minutes)) for p in PROFILES.values()}
    assert len(keys) == 1 and keys.pop()
