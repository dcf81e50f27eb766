"""Class names and colours of the label sets, checked against published facts."""
from __future__ import annotations

import pytest

from danet.data.palettes import (ADE20K, CAMVID, CITYSCAPES, DATASETS, PASCAL_CONTEXT, PASCAL_CONTEXT_59, VOC,
                                 dataset_for_classes, generic_dataset, get_dataset)


@pytest.mark.parametrize("dataset", list(DATASETS.values()), ids=list(DATASETS))
def test_every_dataset_is_consistent(dataset):
    assert len(dataset.palette) == dataset.num_classes
    assert len(set(dataset.classes)) == dataset.num_classes
    assert all(name == name.strip() and name for name in dataset.classes)
    array = dataset.palette_array()
    assert array.shape == (dataset.num_classes, 3) and array.dtype.name == "uint8"
    assert all(0 <= v <= 255 for colour in dataset.palette for v in colour)
    assert get_dataset(dataset.name) is dataset


def test_class_counts():
    assert {name: d.num_classes for name, d in DATASETS.items()} == {
        "camvid": 11, "cityscapes": 19, "voc": 21, "ade20k": 150, "pascal_context": 60, "pascal_context59": 59}


def test_cityscapes_train_ids():
    assert CITYSCAPES.classes[0] == "road" and CITYSCAPES.classes[-1] == "bicycle"
    assert CITYSCAPES.classes.index("person") == 11
    assert CITYSCAPES.palette[0] == (128, 64, 128) and CITYSCAPES.palette[13] == (0, 0, 142)
    assert CITYSCAPES.ignore_index == 255


def test_voc_colour_map_is_the_bit_interleaved_one():
    documented = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
                  [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
                  [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
                  [128, 192, 0], [0, 64, 128]]
    assert [list(c) for c in VOC.palette] == documented
    assert VOC.classes[0] == "background" and VOC.classes[15] == "person" and VOC.classes[20] == "tvmonitor"


def test_ade20k_ends_and_known_entries():
    assert ADE20K.classes[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed")
    assert ADE20K.classes[-2:] == ("clock", "flag")
    assert ADE20K.palette[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))
    assert ADE20K.palette[-1] == (92, 0, 255)
    assert ADE20K.classes.index("person") == 12


def test_pascal_context_uses_ade_colours():
    assert PASCAL_CONTEXT.classes[0] == "background"
    assert PASCAL_CONTEXT.classes[1:] == PASCAL_CONTEXT_59.classes
    assert list(PASCAL_CONTEXT_59.classes) == sorted(PASCAL_CONTEXT_59.classes)
    assert PASCAL_CONTEXT.palette == ADE20K.palette[:60]
    assert PASCAL_CONTEXT_59.palette == ADE20K.palette[1:60]
    assert PASCAL_CONTEXT_59.classes[-1] == "wood"


@pytest.mark.parametrize("count,name", [(19, "cityscapes"), (150, "ade20k"), (21, "voc"), (60, "pascal_context"),
                                        (59, "pascal_context59"), (11, "camvid")])
def test_dataset_for_classes(count, name):
    assert dataset_for_classes(count).name == name


def test_unknown_counts_get_numbered_classes():
    dataset = dataset_for_classes(7)
    assert dataset.classes == tuple(f"class {i}" for i in range(7))
    assert dataset.palette == generic_dataset(7).palette        # deterministic colours


def test_aliases_and_unknown_names():
    assert get_dataset("citys") is CITYSCAPES
    assert get_dataset("Pascal-Context") is PASCAL_CONTEXT
    assert get_dataset("pcontext") is PASCAL_CONTEXT_59
    assert get_dataset("CamVid") is CAMVID
    with pytest.raises(KeyError, match="unknown dataset 'kitti'; known: ade20k, camvid"):
        get_dataset("kitti")
