"""Architecture spaces: conditional choices, keras-tuner declaration, depth honoured."""

import keras
import keras_tuner
import numpy as np
import pytest

from nnkit.layers import DenseBlock, ResidualBlock
from nnkit.search import (
    ArchitectureSpace,
    Choice,
    conv1d_space,
    conv2d_space,
    residual_mlp_space,
    stage_choices,
)


def _none(arch, shape, classes):
    return None


def test_choice_rejects_bad_values():
    with pytest.raises(ValueError, match="values=()"):
        Choice("a", [])
    with pytest.raises(TypeError, match="one type"):
        Choice("a", [1, "b"])
    with pytest.raises(ValueError, match="repeats"):
        Choice("a", [1, 1])
    with pytest.raises(ValueError, match="go together"):
        Choice("a", [1], parent="b")


def test_space_rejects_a_parent_listed_after_its_child():
    with pytest.raises(ValueError, match="before it"):
        ArchitectureSpace(
            [Choice("w", [1], parent="d", parent_values=[2]), Choice("d", [1, 2])], build=_none
        )


def test_the_size_of_a_staged_space_is_the_closed_form():
    # Σ_{s=1..3} 3^s channel patterns × 2 downsample × 2 residual × 2 head.
    expected = sum(3**s for s in (1, 2, 3)) * 2 * 2 * 2
    assert conv1d_space(kernels=(5,)).size == expected == 312
    # MLP: Σ_s (2 depths × 3 widths)^s × [residual: 2·2 (pre_activation, drop_path) + plain: 1]
    #      × 2 activations × 3 normalizations × 2 dropouts.
    mlp = sum(6**s for s in (1, 2, 3)) * (4 + 1) * 2 * 3 * 2
    assert residual_mlp_space().size == mlp


def test_inactive_choices_are_absent():
    space = conv1d_space()
    for arch in space.architectures()[::37]:
        stages = arch["stages"]
        for i in range(3):
            assert (f"stage_{i}_channels" in arch) == (i < stages)
    for arch in residual_mlp_space().architectures()[::101]:
        assert ("pre_activation" in arch) == (arch["skip"] == "residual")
        assert ("drop_path" in arch) == (arch["skip"] == "residual")


def test_keras_tuner_declares_only_the_active_choices():
    space = stage_choices([1, 2, 3], {"width": [8, 16]})
    space = ArchitectureSpace(space, build=_none)
    hp = keras_tuner.HyperParameters()
    arch = space.sample(hp)  # the first option of each: one stage
    assert arch == {"stages": 1, "stage_0_width": 8}
    assert set(hp.values) == set(arch)
    deep = keras_tuner.HyperParameters()
    deep.Choice("stages", [1, 2, 3], default=3)
    arch = space.sample(deep)
    assert set(arch) == {"stages", "stage_0_width", "stage_1_width", "stage_2_width"}


def test_values_from_keras_tuner_map_back_to_the_choice_types():
    space = conv1d_space(stages=(1,), channels=(4,), kernels=(3,))
    arch = space.from_values(
        {
            "stages": 1,
            "stage_0_channels": 4,
            "stage_0_kernel": 3,
            "downsample": "max",
            "residual": 1,
            "head": "avg",
            "extra": 0,
        }
    )
    assert arch["residual"] is True and "extra" not in arch


def test_neighbours_change_one_choice_and_are_in_the_space():
    space = conv1d_space(kernels=(5,))
    keys = {space.key(a) for a in space.architectures()}
    arch = space.architectures()[100]
    neighbours = space.neighbours(arch)
    assert neighbours
    for other in neighbours:
        assert space.key(other) in keys
        shared = set(arch) & set(other)
        changed = [k for k in shared if arch[k] != other[k]]
        assert len(changed) == 1 or (len(changed) == 0 and set(arch) != set(other))
    # closed form: every active choice with n options gives n − 1 neighbours
    expected = sum(len(c.values) - 1 for c in space.choices if c.name in arch)
    assert len(neighbours) == expected


def test_from_unit_reaches_every_option():
    space = ArchitectureSpace([Choice("a", [1, 2, 3]), Choice("b", ["x", "y"])], build=_none)
    seen = {
        space.key(space.from_unit(np.array([u, w]))) for u in (0.0, 0.4, 0.99) for w in (0.1, 0.9)
    }
    assert len(seen) == 6


def _count(model, types):
    return sum(isinstance(layer, types) for layer in model.layers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_built_mlp_has_the_sampled_depth(seed):
    space = residual_mlp_space(widths=(4, 8), normalizations=("none", "layer"))
    arch = space.random(np.random.default_rng(seed))
    model = space.build(arch, (6,), 3)
    depth = sum(arch[f"stage_{i}_depth"] for i in range(arch["stages"]))
    block = ResidualBlock if arch["skip"] == "residual" else DenseBlock
    assert _count(model, block) == depth
    assert model.output_shape == (None, 3)
    keras.backend.clear_session()


@pytest.mark.parametrize("seed", [0, 3])
def test_the_built_conv_net_has_the_sampled_stages(seed):
    space = conv1d_space(channels=(4, 8))
    arch = space.random(np.random.default_rng(seed))
    model = space.build(arch, (40,), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D)]
    main = [layer for layer in convs if layer.kernel_size != (1,)]
    assert len(main) == arch["stages"] * (2 if arch["residual"] else 1)
    assert model.output_shape == (None, 10)
    keras.backend.clear_session()


def test_a_factory_names_the_bad_argument():
    with pytest.raises(TypeError, match="stages=None"):
        conv1d_space(stages=None)
    with pytest.raises(ValueError, match="head"):
        conv1d_space(head=("mean",))
    with pytest.raises(ValueError, match="dropouts"):
        residual_mlp_space(dropouts=(1.5,))


def test_choice_round_trips_through_keras_serialization():
    choice = Choice("stage_1_width", [8, 16], parent="stages", parent_values=[2, 3])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(choice))
    assert restored == choice and restored.parent_values == (2, 3)


def test_the_conv2d_space_size_is_the_closed_form():
    # Σ_{s=1,2} (3 channels × 2 kernels)^s stage patterns × 3 downsample × 2 residual × 2 head
    assert conv2d_space().size == (6 + 36) * 3 * 2 * 2
    assert conv2d_space(kernels=(3,), downsample=("max",)).size == (3 + 9) * 2 * 2


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_the_built_conv2d_net_has_the_sampled_stages(seed):
    space = conv2d_space(channels=(4, 8))
    arch = space.random(np.random.default_rng(seed))
    model = space.build(arch, (8, 8), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    main = [layer for layer in convs if layer.kernel_size != (1, 1)]
    assert len(main) == arch["stages"] * (2 if arch["residual"] else 1)
    for i, layer in enumerate(main[:: 2 if arch["residual"] else 1]):
        assert layer.filters == arch[f"stage_{i}_channels"]
        assert layer.kernel_size == (arch[f"stage_{i}_kernel"],) * 2
    # each "max" or "stride" stage halves the 8×8 input: 8 / 2^stages at the head
    side = 8 // 2 ** arch["stages"] if arch["downsample"] != "none" else 8
    heads = (keras.layers.GlobalAveragePooling2D, keras.layers.Flatten)
    head = next(layer for layer in model.layers if isinstance(layer, heads))
    assert tuple(head.input.shape[1:3]) == (side, side)
    assert model.output_shape == (None, 10)
    keras.backend.clear_session()


def test_every_stage_pattern_of_conv2d_builds_on_the_digits_shape():
    space = conv2d_space(channels=(4,), kernels=(3,))
    for arch in space.architectures():
        model = space.build(arch, (8, 8, 1), 10)
        assert model.output_shape == (None, 10)
        keras.backend.clear_session()
