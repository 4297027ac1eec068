from pathlib import Path

import numpy as np

from scripts.train_default_model import caltech_held_out, folder_labels, photo_class, tiny_wnids


def test_a_photos_class_is_its_tiny_imagenet_wnid_or_its_caltech_folder():
    assert photo_class(Path("/d/tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG")) == "n01443537"
    assert photo_class(Path("/d/caltech101/101_ObjectCategories/Leopards/image_0001.jpg")) == "Leopards"


def test_held_out_classes_never_reach_the_hybrid_stage_labels(tmp_path):
    wnids = [f"n{i:08d}" for i in range(202)]  # the repo's wnids.txt adds two of its own at the end
    (tmp_path / "wnids.txt").write_text("\n".join(wnids))
    trained, held = tiny_wnids(tmp_path)
    assert len(trained) == 160 and len(held) == 40 and not set(trained) & set(held)
    assert wnids[200] not in trained + held
    photos = [tmp_path / "train" / w / "images" / f"{w}_0.JPEG" for w in trained]
    assert {photo_class(p) for p in photos} == set(trained)
    assert len(caltech_held_out()) == 21


def test_folder_labels_index_the_sorted_class_names_of_kept_photos():
    photos = [Path("/c/Leopards/a.jpg"), Path("/t/train/n02/images/x.JPEG"), Path("/c/Faces/b.jpg"), Path("/c/Leopards/c.jpg")]
    labels, names = folder_labels(photos, np.array([True, True, False, True]))
    assert names == ["Leopards", "n02"] and labels.tolist() == [0, 1, 0]
