import pytest

from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
from indexer.errors import ConfigError
from indexer.images import MAX_TRIMS


def test_fingerprint_is_stable_and_sensitive():
    a = EmbeddingConfig()
    assert a.fingerprint() == EmbeddingConfig().fingerprint()
    assert a.fingerprint() != a.replace(timestep=100).fingerprint()
    assert a.fingerprint("model-x") != a.fingerprint("model-y")
    assert EmbeddingConfig.from_dict(a.to_dict()) == a


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_size": 100}, "image_size"),
        ({"timestep": 100, "inversion_steps": 3}, "multiple of inversion_steps"),
        ({"blocks": ("side.0",)}, "unknown block"),
        ({"blocks": ()}, "at least one"),
        ({"grid": 0, "gap": False}, "grid"),
        ({"timestep": -1}, "timestep"),
    ],
)
def test_bad_settings_name_the_parameter(changes, message):
    with pytest.raises(ConfigError, match=message):
        EmbeddingConfig(**changes)


def test_unknown_keys_and_runtime_limits():
    with pytest.raises(ConfigError, match="unknown"):
        EmbeddingConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="batch_size"):
        RuntimeOptions(batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        RuntimeOptions(dtype="float16")  # type: ignore[arg-type]


def test_dtype_is_not_part_of_the_fingerprint_but_old_indexes_still_match():
    newer = ("trim_borders", "frame_aspect", "trim_repeat", "reduced_decode", "heif_thumbnails", "to_srgb")
    old = {k: v for k, v in EmbeddingConfig().to_dict().items() if k not in newer} | {"dtype": "bfloat16"}  # stored before
    config = EmbeddingConfig.from_stored(old)
    # it predates all: no trimming, the square, every JPEG decoded in full, pixels read as sRGB
    assert config == EmbeddingConfig(
        trim_borders=False, frame_aspect=1.0, trim_repeat=False, reduced_decode=False, heif_thumbnails=False, to_srgb=False
    )
    assert config.decode_options == (0, 0, False) and EmbeddingConfig().decode_options == (384, 192, True)
    assert config.decode_side == 0 and EmbeddingConfig().decode_side == 3 * 128
    assert config.thumbnail_side == 0 and EmbeddingConfig().thumbnail_side == 192
    assert config.fingerprint("m", legacy_dtype="bfloat16") != config.fingerprint("m")
    assert EmbeddingConfig.from_dict({"timestep": 50}).trim_borders  # a partial config keeps today's defaults
    assert EmbeddingConfig.from_dict({"timestep": 50}).frame_aspect == 1.25
    assert EmbeddingConfig.from_dict({"timestep": 50}).trims == MAX_TRIMS and EmbeddingConfig(trim_borders=False).trims == 0
    stored_last_release = EmbeddingConfig().to_dict() | {"frame_aspect": 1.0}
    for name in ("trim_repeat", "reduced_decode", "heif_thumbnails", "to_srgb"):
        del stored_last_release[name]
    square = EmbeddingConfig.from_stored({k: v for k, v in stored_last_release.items() if k != "frame_aspect"})
    assert square.trims == 1  # trimmed once, as it was built
    assert square.fingerprint("m") == EmbeddingConfig.from_stored(stored_last_release).fingerprint("m")  # unchanged by the setting
    assert square.fingerprint("m") != EmbeddingConfig().fingerprint("m")  # whole-frame vectors are not mixed with square ones
    before_reduced = {k: v for k, v in EmbeddingConfig().to_dict().items() if k not in ("reduced_decode", "heif_thumbnails", "to_srgb")}
    full_decode = EmbeddingConfig.from_stored(before_reduced)
    assert not full_decode.reduced_decode and full_decode.fingerprint("m") != EmbeddingConfig().fingerprint("m")
    assert full_decode.fingerprint("m") == EmbeddingConfig.from_stored(before_reduced | {"reduced_decode": False}).fingerprint("m")
    framed_once = EmbeddingConfig.from_stored(before_reduced | {"trim_repeat": False})
    assert framed_once.fingerprint("m") == EmbeddingConfig.from_stored({k: v for k, v in before_reduced.items() if k != "trim_repeat"}).fingerprint("m")
    assert framed_once.fingerprint("m") != EmbeddingConfig().fingerprint("m")  # trimmed once is not trimmed until done
    import hashlib, json  # noqa: E401 - the exact payload the earlier release hashed
    payload = json.dumps({"config": old, "model": "m"}, sort_keys=True)
    assert config.fingerprint("m", legacy_dtype="bfloat16") == hashlib.sha256(payload.encode()).hexdigest()[:16]
    before_heif = {k: v for k, v in EmbeddingConfig().to_dict().items() if k not in ("heif_thumbnails", "to_srgb")}  # two releases back
    last = EmbeddingConfig.from_stored(before_heif)
    assert last.reduced_decode and not last.heif_thumbnails and last.thumbnail_side == 0  # its HEICs decode in full, as built
    same_payload = json.dumps({"config": before_heif, "model": "m"}, sort_keys=True)
    assert last.fingerprint("m") == hashlib.sha256(same_payload.encode()).hexdigest()[:16] != EmbeddingConfig().fingerprint("m")
    before_srgb = {k: v for k, v in EmbeddingConfig().to_dict().items() if k != "to_srgb"}  # the release before it
    last = EmbeddingConfig.from_stored(before_srgb)
    assert last.heif_thumbnails and not last.to_srgb and last.decode_options == (384, 192, False)  # read as sRGB, as built
    same_payload = json.dumps({"config": before_srgb, "model": "m"}, sort_keys=True)
    assert last.fingerprint("m") == hashlib.sha256(same_payload.encode()).hexdigest()[:16] != EmbeddingConfig().fingerprint("m")
