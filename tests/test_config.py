import json

import pytest

from golden.config import PRESETS, AccelConfig, get_config, preset_names


def test_presets_are_valid_and_named():
    assert {"tiny", "default"} <= set(preset_names())
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert cfg.weight_buffer_depth >= cfg.weight_words(cfg.max_dim, 3 * cfg.max_dim)
        assert cfg.weight_buffer_depth >= cfg.weight_words(cfg.max_hidden, cfg.max_dim)


def test_default_is_deit_tiny_on_8x8():
    cfg = get_config()
    assert (cfg.rows, cfg.cols, cfg.max_tokens, cfg.max_dim, cfg.max_hidden) == \
        (8, 8, 197, 192, 768)
    assert cfg.max_gemm_dim == 768


@pytest.mark.parametrize("field, value, message", [
    ("rows", 0, r"rows must be in the range \[1, 64\], not 0"),
    ("cols", 65, r"cols must be in the range \[1, 64\], not 65"),
    ("act_width", 1, r"act_width must be in the range \[2, 16\], not 1"),
    ("max_tokens", 0, r"max_tokens must be in the range \[1, 4096\], not 0"),
    ("acc_width", 16, r"acc_width must be in the range \[26, 48\], not 16"),
    ("mult_width", 30, r"mult_width must be in the range \[1, 29\], not 30"),
    ("weight_buffer_depth", -1, r"weight_buffer_depth must be in the range"),
    ("out_fifo_depth", 3, r"out_fifo_depth must be 0 \(automatic\) or in the range \[8, 4096\]"),
])
def test_invalid_values_name_the_parameter(field, value, message):
    with pytest.raises(ValueError, match=message):
        AccelConfig(**{field: value})


def test_non_integer_is_type_error():
    with pytest.raises(TypeError, match=r"rows must be an integer, not 2.5"):
        AccelConfig(rows=2.5)
    with pytest.raises(TypeError, match=r"cols must be an integer, not True"):
        AccelConfig(cols=True)


def test_accumulator_must_hold_the_longest_dot_product():
    # A is act_width + 1 bits signed (unsigned-A GEMMs): 8 + 1 + 8 - 1 + ceil(log2(768)) = 26
    AccelConfig(acc_width=26)
    message = ("acc_width must be in the range [26, 48], not 25: a dot product of "
               "max_gemm_dim = 768 terms of (act_width + 1) x weight_width bits needs "
               "act_width + 1 + weight_width - 1 + ceil_log2(max_gemm_dim) = 26 bits")
    with pytest.raises(ValueError) as info:
        AccelConfig(acc_width=25)
    assert str(info.value) == message
    # tiny: max_gemm_dim = 96 -> 8 + 1 + 8 - 1 + 7 = 23
    PRESETS["tiny"].replace(acc_width=23)
    with pytest.raises(ValueError, match=r"acc_width must be in the range \[23, 48\], not 22"):
        PRESETS["tiny"].replace(acc_width=22)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of tiny, default"):
        get_config("huge")


def test_json_file_with_preset_and_overrides(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"preset": "tiny", "rows": 2, "cols": 3}))
    cfg = get_config(str(path))
    assert (cfg.rows, cfg.cols, cfg.max_dim) == (2, 3, 32)
    assert cfg.name == "mine"
    # the weight buffer is re-sized for the new column count
    assert cfg.weight_buffer_depth == cfg._largest_layer_words()


def test_json_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        get_config(str(bad))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"rows": 4, "lanes": 2}))
    with pytest.raises(ValueError, match=r"unknown configuration parameter\(s\) lanes"):
        get_config(str(unknown))
    with pytest.raises(ValueError, match="does not exist"):
        get_config(str(tmp_path / "missing.json"))


def test_round_trip_dict():
    cfg = PRESETS["tiny"]
    assert AccelConfig.from_dict(cfg.to_dict()) == cfg
