import pytest

from services.common.keys import MAX_KEY_LENGTH, InvalidKeyError, validate_id, validate_key


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "a/../../b", "/abs/key", "a//b", "a/./b", "a\\b", "C:/x", "x" * (MAX_KEY_LENGTH + 1),
     "a/b c", ".tmp/upload", "", "a/\x00"],
)  # fmt: skip
def test_unsafe_keys_are_refused_with_a_reason(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def test_ordinary_keys_pass_unchanged() -> None:
    key = "datasets/ds-1/landmarks/detections/results/00000/img00000001.txt"
    assert validate_key(key) == key


@pytest.mark.parametrize("value", ["UPPER", "-x", "a" * 65, "a/b", "a..b/"])
def test_ids_are_lower_case_slugs(value: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_id(value)
