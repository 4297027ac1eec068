import pytest

from indexer.config import EmbeddingConfig, RuntimeOptions
from indexer.errors import ConfigError


def test_fingerprint_is_stable_and_sensitive():
    a = EmbeddingConfig()
    assert a.fingerprint() == EmbeddingConfig().fingerprint()
    assert a.fingerprint() != a.replace(timestep=50).fingerprint()
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
        ({"dtype": "float16"}, "dtype"),
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
