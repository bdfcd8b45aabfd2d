"""nnkit._keras.shadow: reversible instance patches that compose in a fixed order."""

import pytest

from nnkit._keras import shadow


class Target:
    def run(self, x):
        return [f"run({x})"]


def tag(name):
    def wrapper(call_next, x):
        return [f"{name}>", *call_next(x), f"<{name}"]

    return wrapper


def test_one_patch_wraps_and_its_removal_restores_exactly():
    target = Target()
    before = dict(vars(target))
    patch = shadow.shadow(target, "run", tag("monitor"), owner="gradient_monitor")
    assert target.run(1) == ["monitor>", "run(1)", "<monitor"]
    assert shadow.owners(target, "run") == ["gradient_monitor"]
    shadow.unshadow(patch)
    assert vars(target) == before and target.run(1) == ["run(1)"]
    shadow.unshadow(patch)  # idempotent


@pytest.mark.parametrize("reverse", [False, True])
def test_patches_compose_in_order_whatever_the_install_order(reverse):
    target = Target()
    owners = ["clip_after_aggregation", "gradient_monitor", "train_function"]
    for owner in reversed(owners) if reverse else owners:
        shadow.shadow(target, "run", tag(owner), owner=owner)
    assert shadow.owners(target, "run") == owners  # shadow.ORDER, outermost first
    assert target.run(0) == [
        "clip_after_aggregation>", "gradient_monitor>", "train_function>", "run(0)",
        "<train_function", "<gradient_monitor", "<clip_after_aggregation",
    ]  # fmt: skip


def test_a_wrapper_may_replace_the_call():
    target = Target()
    shadow.shadow(target, "run", lambda call_next, x: ["instead"], owner="gradient_monitor")
    assert target.run(3) == ["instead"]
    assert shadow.original(target, "run")(3) == ["run(3)"]  # beneath every patch


def test_a_method_looked_up_earlier_keeps_what_it_got():
    target = Target()
    patch = shadow.shadow(target, "run", tag("monitor"), owner="gradient_monitor")
    looked_up = target.run  # e.g. traced into a function before the patch is removed
    shadow.unshadow(patch)
    assert looked_up(2) == ["monitor>", "run(2)", "<monitor"] and target.run(2) == ["run(2)"]


def test_removing_the_middle_patch_keeps_the_others():
    target = Target()
    outer = shadow.shadow(target, "run", tag("a"), owner="clip_after_aggregation")
    middle = shadow.shadow(target, "run", tag("b"), owner="gradient_monitor")
    shadow.unshadow(middle)
    assert target.run(0) == ["a>", "run(0)", "<a"]
    shadow.unshadow(outer)
    assert "run" not in vars(target)


def test_a_foreign_instance_attribute_is_the_original_and_is_put_back():
    target = Target()
    own = lambda x: ["own"]  # noqa: E731
    target.run = own
    patch = shadow.shadow(target, "run", tag("m"), owner="gradient_monitor")
    assert target.run(0) == ["m>", "own", "<m"]
    shadow.unshadow(patch)
    assert vars(target)["run"] is own


def test_errors_name_what_was_received():
    target = Target()
    with pytest.raises(ValueError, match="Received: owner='me'"):
        shadow.shadow(target, "run", tag("x"), owner="me")
    with pytest.raises(TypeError, match="Received: wrapper=3"):
        shadow.shadow(target, "run", 3, owner="gradient_monitor")
    shadow.shadow(target, "run", tag("x"), owner="gradient_monitor")
    with pytest.raises(ValueError, match="already shadows `run`"):
        shadow.shadow(target, "run", tag("y"), owner="gradient_monitor")
    assert shadow.find(target, "run", "gradient_monitor") is not None
    assert shadow.find(target, "run", "train_function") is None
