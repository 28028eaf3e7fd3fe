import pytest

from vgpu._private.units import UnitError, format_compute, format_memory, parse_compute, parse_memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * 1024**3),
        ("512MB", 512 * 1000**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("  8 gib ", 8 * 1024**3),
        ("4096", 4096),
        (1024, 1024),
        ("1TiB", 1024**4),
    ],
)
def test_parse_memory(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "0", "0GiB", "20 parsecs", "1..2GB", True, -5, 0])
def test_parse_memory_rejects_with_hint(text: str | int) -> None:
    with pytest.raises(UnitError) as info:
        parse_memory(text)
    assert "memory" in str(info.value)


@pytest.mark.parametrize(
    ("value", "milli"), [(0.5, 500), ("50%", 500), ("250m", 250), (1, 1000), ("0.001", 1), (0.0004 + 0.001, 1)]
)
def test_parse_compute(value: float | str, milli: int) -> None:
    assert parse_compute(value) == milli


@pytest.mark.parametrize("value", [0, 1.5, "0%", "101%", "abc", "-0.5", True, "1001m"])
def test_parse_compute_rejects(value: float | str) -> None:
    with pytest.raises(UnitError, match="compute"):
        parse_compute(value)


def test_format_round_trip() -> None:
    assert format_memory(20 * 1024**3) == "20GiB"
    assert format_memory(int(1.5 * 1024**3)) == "1.5GiB"
    assert format_memory(12) == "12B"
    assert format_compute(500) == "0.5"
    assert format_compute(1000) == "1"
