"""The accelerator configuration: the single source of truth for every hardware knob.

One frozen dataclass, :class:`AccelConfig`, holds every parameter that shapes the generated
hardware. The golden models, the RTL generators, the simulation harnesses, the benchmarks and the
docs all read their numbers from it, so they cannot disagree. Named presets live in
:data:`PRESETS`; :func:`get_config` resolves a preset name or a JSON file.

Every value is validated when the object is built; an invalid value raises :class:`ValueError`
(or :class:`TypeError` for a non-integer) naming the parameter and the allowed range.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AccelConfig", "PRESETS", "get_config", "preset_names", "check_int"]


def check_int(name, value, lo, hi):
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in the range [{lo}, {hi}], not {value}")


@dataclass(frozen=True)
class AccelConfig:
    """Hardware parameters of one accelerator instance.

    Parameters
    ----------
    rows, cols : int
        Shape of the systolic PE array (``rows`` x ``cols`` int8 MACs), independent.
    act_width, weight_width : int
        Bit widths of activations and weights (signed two's complement).
    acc_width : int
        Accumulator width. Must be wide enough that a dot product of ``max_gemm_dim`` terms of
        extreme operands cannot overflow. The GEMM's A operand may be signed or unsigned
        ``act_width`` bits (``a_unsigned``: softmax probabilities), a signed ``act_width + 1``-bit
        value either way, so: ``act_width + 1 + weight_width - 1 + ceil_log2(max_gemm_dim)
        <= acc_width`` (26 <= 32 for the presets).
    mult_width : int
        Width of the unsigned requantization multiplier ``M`` (see ``docs/numerics.md``).
    max_tokens : int
        Largest token count (GEMM ``M``) the hardware accepts.
    max_dim : int
        Largest embedding dimension.
    max_hidden : int
        Largest MLP hidden dimension.
    score_width : int
        Width of the unsigned token-importance score the top-k token selector ranks; its
        histogram has ``2**score_width`` bins (see ``docs/token_pruning.md``).
    weight_buffer_depth : int
        Words of ``cols`` weights in the GEMM engine's weight buffer; a GEMM needs
        ``K * ceil(N / cols)`` words. ``0`` (the default) sizes it for the largest ViT layer
        allowed by ``max_dim``/``max_hidden``/``max_tokens``.
    out_fifo_depth : int
        Rows of ``cols`` outputs buffered after the GEMM epilogue. ``0`` (the default) lets the
        engine size it for its pipeline so that output credits never stall (see ``rtl.gemm``).
    sparse_block : int
        Block size of static weight sparsity (``docs/sparse_format.md``). ``0`` (the default)
        ties it to the array: blocks of ``cols`` output channels x ``rows`` input channels.
        Otherwise square ``sparse_block x sparse_block`` blocks; the size must be a multiple or
        a divisor of ``cols`` so that block-rows and output tiles nest.
    max_heads : int
        Largest number of attention heads: rows of the score buffer that holds the CLS-row
        attention probabilities of every head for the token selector (``docs/isa.md``).
    """

    rows: int = 8
    cols: int = 8
    act_width: int = 8
    weight_width: int = 8
    acc_width: int = 32
    mult_width: int = 16
    max_tokens: int = 197
    max_dim: int = 192
    max_hidden: int = 768
    weight_buffer_depth: int = 0
    out_fifo_depth: int = 0
    sparse_block: int = 0
    score_width: int = 8
    max_heads: int = 16
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        check_int("rows", self.rows, 1, 64)
        check_int("cols", self.cols, 1, 64)
        check_int("act_width", self.act_width, 2, 16)
        check_int("weight_width", self.weight_width, 2, 16)
        check_int("max_tokens", self.max_tokens, 1, 4096)
        check_int("max_dim", self.max_dim, 1, 8192)
        check_int("max_hidden", self.max_hidden, 1, 32768)
        check_int("score_width", self.score_width, 1, 12)
        # A is act_width + 1 bits signed (an unsigned act_width-bit operand, zero-extended).
        need = (self.act_width + 1 + self.weight_width - 1
                + math.ceil(math.log2(self.max_gemm_dim)))
        try:
            check_int("acc_width", self.acc_width, max(need, 2), 48)
        except ValueError as exc:
            raise ValueError(f"{exc}: a dot product of max_gemm_dim = {self.max_gemm_dim} terms "
                             f"of (act_width + 1) x weight_width bits needs act_width + 1 + "
                             f"weight_width - 1 + ceil_log2(max_gemm_dim) = {need} bits"
                             ) from None
        # (acc + bias) * M must fit the golden model's int64 arithmetic with room to round.
        check_int("mult_width", self.mult_width, 1, 61 - self.acc_width)
        check_int("weight_buffer_depth", self.weight_buffer_depth, 0, 1 << 22)
        if self.weight_buffer_depth == 0:
            object.__setattr__(self, "weight_buffer_depth", self._largest_layer_words())
        check_int("out_fifo_depth", self.out_fifo_depth, 0, 4096)
        if 0 < self.out_fifo_depth < self.rows:
            raise ValueError(f"out_fifo_depth must be 0 (automatic) or in the range "
                             f"[{self.rows}, 4096] (at least rows), not {self.out_fifo_depth}")
        check_int("sparse_block", self.sparse_block, 0, 1024)
        if self.sparse_block and self.sparse_block % self.cols and self.cols % self.sparse_block:
            raise ValueError(f"sparse_block must be 0, a multiple or a divisor of cols "
                             f"({self.cols}), not {self.sparse_block}")
        check_int("max_heads", self.max_heads, 1, 64)

    # -- derived quantities -----------------------------------------------------------------

    @property
    def max_gemm_dim(self) -> int:
        """Largest GEMM dimension (M, K or N) of a ViT layer within this configuration."""
        return max(3 * self.max_dim, self.max_hidden, self.max_tokens)

    @property
    def max_shift(self) -> int:
        """Largest requantization shift: the width of ``(acc + bias) * M`` minus one."""
        return self.acc_width + 1 + self.mult_width - 1

    @property
    def shift_width(self) -> int:
        return self.max_shift.bit_length()

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def weight_words(self, k: int, n: int) -> int:
        """Weight-buffer words a ``K x N`` weight matrix occupies."""
        return k * -(-n // self.cols)

    def _largest_layer_words(self) -> int:
        d, h, t = self.max_dim, self.max_hidden, self.max_tokens
        shapes = [(d, 3 * d), (d, d), (d, h), (h, d), (t, t)]
        return max(self.weight_words(k, n) for k, n in shapes)

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, name: str = "custom") -> "AccelConfig":
        if not isinstance(values, dict):
            raise TypeError(f"configuration must be a JSON object, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration parameter(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(known - {'name'}))}")
        values = dict(values)
        values.setdefault("name", name)
        return cls(**values)

    def replace(self, **changes) -> "AccelConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, AccelConfig] = {
    # Small enough for Amaranth's Python simulator in the test-suite.
    "tiny": AccelConfig(rows=4, cols=4, max_tokens=32, max_dim=32, max_hidden=64,
                        name="tiny"),
    # DeiT-Tiny shapes on an 8x8 array.
    "default": AccelConfig(name="default"),
    # DeiT-Tiny shapes on a 16x16 array.
    "deit-tiny": AccelConfig(rows=16, cols=16, name="deit-tiny"),
    # DeiT-Small shapes on a 16x16 array.
    "deit-small": AccelConfig(rows=16, cols=16, max_dim=384, max_hidden=1536,
                              name="deit-small"),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_config(spec: "str | AccelConfig | None" = None) -> AccelConfig:
    """Resolve a preset name, a path to a JSON file of parameters, or a config (returned as is).

    A JSON file may hold ``{"preset": NAME, ...overrides}`` or a full set of parameters.
    """
    if spec is None:
        return PRESETS["default"]
    if isinstance(spec, AccelConfig):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"config must be a preset name or a JSON file path, not {spec!r}")
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"config file {spec!r} does not exist")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {spec!r} is not valid JSON: {exc}") from None
        if isinstance(values, dict) and "preset" in values:
            base = get_config(values.pop("preset"))
            merged = {**base.to_dict(), "weight_buffer_depth": 0}
            merged.update(name=path.stem)
            unknown = sorted(set(values) - set(merged))
            if unknown:
                raise ValueError(f"unknown configuration parameter(s) {', '.join(unknown)}")
            merged.update(values)
            return AccelConfig(**merged)
        return AccelConfig.from_dict(values, name=path.stem)
    raise ValueError(f"unknown preset {spec!r}; choose one of {', '.join(PRESETS)} "
                     f"or a .json file")
