"""Old flat data params map to today's unit layout, and the result validates as a current RunConfig."""

from __future__ import annotations

from oner_lab.spec.config import RunConfig
from oner_lab.spec.legacy_data import upgrade_data_keys
from oner_lab.spec.merge import set_at

OLD_DEFAULTS = {  # what every run logged for the flat data keys before sources were units
    "data.urls": None,
    "data.weights": None,
    "data.csv_separator": "\t",
    "data.csv_img_key": "filepath",
    "data.csv_caption_key": "title",
    "data.image_root": None,
    "data.splits": ["train", "restval"],
}


def nested(dotted: dict) -> dict:
    config: dict = {}
    for key, value in dotted.items():
        config = set_at(config, key.split("."), value)
    return config


def test_each_old_kind_keeps_its_own_settings_and_validates() -> None:
    cases = {
        "shapes": ({}, {"kind": "shapes"}),
        "webdataset": (
            {"data.urls": "/d/{0..3}.tar", "data.weights": [2.0]},
            {"kind": "webdataset", "urls": "/d/{0..3}.tar", "weights": [2.0]},
        ),
        "csv": (
            {"data.urls": "/d/a.csv", "data.csv_separator": ","},
            {
                "kind": "csv",
                "urls": "/d/a.csv",
                "weights": None,
                "separator": ",",
                "img_key": "filepath",
                "caption_key": "title",
            },
        ),
        "karpathy": (
            {"data.urls": "/d/c.json", "data.splits": ["train"]},
            {"kind": "karpathy", "urls": "/d/c.json", "weights": None, "image_root": None, "splits": ["train"]},
        ),
    }
    for kind, (settings, expected) in cases.items():
        old = {"data.source": kind, "data.train_size": 64, **OLD_DEFAULTS, **settings, "train.lr": 0.1}
        new = upgrade_data_keys(old)
        assert not any(key in new for key in OLD_DEFAULTS) and "data.source" not in new
        assert new["data.train_size"] == 64 and new["train.lr"] == 0.1
        config = RunConfig.model_validate(nested(new))
        assert config.data.source.model_dump() == expected, kind


def test_eval_sources_lose_the_keys_of_other_formats_and_current_keys_pass_unchanged() -> None:
    old = {
        "data.source": "shapes",
        "data.eval_sources.coco.format": "karpathy",
        "data.eval_sources.coco.path": "/c.json",
        "data.eval_sources.coco.split": "test",
        "data.eval_sources.coco.class_names": None,
        "data.eval_sources.coco.templates": None,
        "data.eval_sources.coco.image_root": None,
    }
    new = upgrade_data_keys(old)
    assert sorted(k for k in new if k.startswith("data.eval_sources")) == [
        "data.eval_sources.coco.format",
        "data.eval_sources.coco.image_root",
        "data.eval_sources.coco.path",
        "data.eval_sources.coco.split",
    ]
    RunConfig.model_validate(nested(new))
    assert upgrade_data_keys(new) == new
