"""Whole-model ViT: float PyTorch reference, state-dict loading, quantization, integer model.

The model is DeiT-style (``docs/vit.md``): patch embedding, CLS token, position embedding,
``depth`` pre-LN encoder blocks (multi-head self-attention and a GELU MLP, each with a residual),
optional attention-score token pruning after the attention residual of configured blocks,
block-sparse weights, a final LayerNorm and a classifier head on the CLS token.

* :class:`VitConfig` -- the model's shape and compression settings.
* :class:`FloatViT` -- the float reference (``torch.nn.Module``). Its parameter names follow
  timm's DeiT (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ...), so a timm
  state dict of the same shape loads directly (:func:`load_state_dict`). The patch embedding's
  ``Conv2d(C, D, p, stride=p)`` is computed as a ``Linear`` on flattened patches
  (:func:`patchify`): the same numbers, and the form the GEMM engine runs.
* :func:`prune_weights` -- block-sparse pruning of the encoder's linear layers with
  :func:`golden.pruning.block_prune` (the float reference then uses the pruned weights).
* :func:`quantize_model` -- calibration on a few inputs (per-tensor max-abs activation scales),
  per-output-channel weight scales, every rescale an ``(M, S)`` pair from
  :func:`golden.fixedpoint.quantize_multiplier`. Returns a :class:`QuantViT`.
* :func:`forward_int` -- the integer model, built only from the golden unit functions (GEMM
  epilogue, LayerNorm, softmax, GELU, token pruning) and the two operations of
  :mod:`golden.isa`.

Token pruning in float mirrors the integer rule (:mod:`golden.token_prune`): the score of a
token is the head-mean of the CLS attention row, the ``keep_count`` best are kept in order (ties
to the lower index) and the others are fused into a package token, their score-weighted mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import AccelConfig
from .fixedpoint import quantize, quantize_multiplier
from .gelu import GeluParams, gelu_int, gelu_params
from .gemm import EpilogueParams
from .isa import AddParams, add_int, gemm_ext
from .layernorm import LnParams, layernorm_int, ln_params
from .pruning import BlockPattern, block_prune, default_block
from .softmax import IN_FRAC, OUT_FRAC, softmax_int
from .token_prune import keep_count, prune_tokens_attention

__all__ = [
    "FloatViT", "QuantViT", "VitConfig", "calibrate", "expected_shapes", "forward_int",
    "load_state_dict", "patchify", "prune_weights", "quantize_input", "quantize_model",
    "tiny_vit_config", "token_counts",
]

#: Linear layers of every block that are block-pruned.
PRUNED_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LN_EPS = 1e-6
#: Headroom of the 16-bit classifier logits over their calibrated maximum.
LOGIT_HEADROOM = 4.0


@dataclass(frozen=True)
class VitConfig:
    """Shape and compression of a DeiT-style ViT.

    Parameters
    ----------
    img_size, patch, in_chans : int
        Square images of ``img_size`` pixels, ``patch`` x ``patch`` patches, ``in_chans``
        channels; ``(img_size / patch)**2`` patches plus CLS are the tokens.
    dim, heads, depth, mlp_ratio, num_classes : int
        Embedding dimension, attention heads (``dim`` divisible by ``heads``), encoder blocks,
        MLP hidden = ``dim * mlp_ratio``, classes.
    prune_layers : tuple of int
        Blocks after whose attention residual tokens are pruned.
    keep_rate : float
        Fraction of non-CLS tokens kept at each pruning block.
    weight_density : float
        Fraction of weight blocks kept in the encoder's linear layers (1.0: dense).
    """

    img_size: int = 16
    patch: int = 4
    in_chans: int = 3
    dim: int = 32
    heads: int = 2
    depth: int = 2
    mlp_ratio: int = 2
    num_classes: int = 10
    prune_layers: tuple = ()
    keep_rate: float = 1.0
    weight_density: float = 1.0

    def __post_init__(self):
        for name, lo, hi in (("img_size", 1, 4096), ("patch", 1, 4096), ("in_chans", 1, 64),
                             ("dim", 1, 8192), ("heads", 1, 64), ("depth", 1, 64),
                             ("mlp_ratio", 1, 16), ("num_classes", 1, 100000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be in the range [{lo}, {hi}], not {value}")
        if self.img_size % self.patch:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch "
                             f"({self.patch})")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        object.__setattr__(self, "prune_layers", tuple(int(i) for i in self.prune_layers))
        for i in self.prune_layers:
            if not 0 <= i < self.depth:
                raise ValueError(f"prune_layers entries must be in the range "
                                 f"[0, {self.depth - 1}], not {i}")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate must be in the range (0, 1], not {self.keep_rate}")
        if not 0 < self.weight_density <= 1:
            raise ValueError(f"weight_density must be in the range (0, 1], not "
                             f"{self.weight_density}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_chans * self.patch * self.patch

    @property
    def hidden(self) -> int:
        return self.dim * self.mlp_ratio

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def replace(self, **kw) -> "VitConfig":
        from dataclasses import replace
        return replace(self, **kw)


def tiny_vit_config(**kw) -> VitConfig:
    """The test model: 16x16x3 images, patch 4 (17 tokens), D = 32, 2 heads, 2 blocks, hidden
    64, 10 classes, token pruning (keep 0.5) after block 0's attention, weight density 0.5."""
    base = dict(prune_layers=(0,), keep_rate=0.5, weight_density=0.5)
    base.update(kw)
    return VitConfig(**base)


def token_counts(cfg: VitConfig) -> list[int]:
    """Tokens entering each block's MLP (after its pruning, if any); index ``depth`` is the
    count at the head."""
    n = cfg.num_patches + 1
    out = []
    for i in range(cfg.depth):
        if i in cfg.prune_layers:
            k = keep_count(n, cfg.keep_rate)
            n = k + 1 + (1 if k < n - 1 else 0)
        out.append(n)
    out.append(n)
    return out


def expected_shapes(cfg: VitConfig) -> dict[str, tuple]:
    """Every parameter name of the model with its shape (timm DeiT naming)."""
    d, h, p = cfg.dim, cfg.hidden, cfg.patch
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, cfg.num_patches + 1, d),
        "patch_embed.proj.weight": (d, cfg.in_chans, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (h, d), b + "mlp.fc1.bias": (h,),
            b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,),
        })
    shapes.update({"norm.weight": (d,), "norm.bias": (d,),
                   "head.weight": (cfg.num_classes, d), "head.bias": (cfg.num_classes,)})
    return shapes


# -- float reference ---------------------------------------------------------------------------

def patchify(images, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)*(W/p), C*p*p]``: row-major patches, each flattened in
    ``(c, i, j)`` order, the order of ``Conv2d.weight.flatten(1)``. So
    ``conv(x).flatten(2).transpose(1, 2) == patchify(x) @ W.flatten(1).T + bias``."""
    x = torch.as_tensor(images)
    b, c, hgt, wid = x.shape
    x = x.reshape(b, c, hgt // patch, patch, wid // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (hgt // patch) * (wid // patch),
                                                c * patch * patch)


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch, stride=cfg.patch)


class _Attention(nn.Module):
    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)


class _Mlp(nn.Module):
    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim)


class _Block(nn.Module):
    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.attn = _Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.mlp = _Mlp(cfg)


def _prune_float(x, cls_attn, keep_rate):
    """EViT-style pruning of one sample: ``x [N, D]``, ``cls_attn [H, N]``."""
    n = x.shape[0]
    k = keep_count(n, keep_rate)
    score = cls_attn[:, 1:].mean(0)
    order = torch.from_numpy(np.argsort(-score.detach().numpy(), kind="stable").copy())
    keep = torch.sort(order[:k]).values
    rows = [x[:1], x[1:][keep]]
    if k < n - 1:
        drop = order[k:]
        w = score[drop]
        rows.append(((w[:, None] * x[1:][drop]).sum(0) / w.sum().clamp_min(1e-12))[None])
    return torch.cat(rows)


class FloatViT(nn.Module):
    """Float DeiT-style ViT with timm parameter names (see the module docstring).

    ``forward(images)`` takes ``[B, C, H, W]`` floats and returns ``[B, classes]`` logits.
    ``forward(images, record=d)`` also stores, for calibration, the largest absolute value of
    every activation the integer model quantizes under its name in ``d`` (max over calls).
    """

    def __init__(self, cfg: VitConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.patch_embed = _PatchEmbed(cfg)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.head = nn.Linear(d, cfg.num_classes)

    @classmethod
    def random(cls, cfg: VitConfig, seed: int = 0) -> "FloatViT":
        """Random weights: linear weights with variance ``1 / fan_in``, embeddings and tokens
        with std 0.5, biases and LayerNorm shifts with std 0.2, LayerNorm scales ``1 + 0.2 N``
        (so that every parameter visibly matters)."""
        g = torch.Generator().manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm1.weight") or name.endswith("norm2.weight") \
                        or name == "norm.weight":
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
                elif p.ndim == 1:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                elif "embed" in name or "token" in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
                else:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        return model

    def forward(self, images, record: dict | None = None):
        cfg = self.cfg
        rec = (lambda name, t: record.__setitem__(
            name, max(record.get(name, 0.0), float(t.detach().abs().max())))) \
            if record is not None else (lambda name, t: None)
        x = patchify(torch.as_tensor(images, dtype=torch.float32), cfg.patch)
        rec("input", x)
        w = self.patch_embed.proj.weight.flatten(1)
        pe = x @ w.T + self.patch_embed.proj.bias
        rec("patch", pe)
        emb = torch.cat([self.cls_token + self.pos_embed[:, :1], self.pos_embed[:, 1:]], 1)
        rec("embed", emb)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1),
                       pe + self.pos_embed[:, 1:]], 1)
        rec("x0", x)
        d, nh, hd = cfg.dim, cfg.heads, cfg.head_dim
        for i, blk in enumerate(self.blocks):
            p = f"b{i}."
            xn = nn.functional.layer_norm(x, (d,), blk.norm1.weight, blk.norm1.bias, LN_EPS)
            rec(p + "ln1", xn)
            qkv = nn.functional.linear(xn, blk.attn.qkv.weight, blk.attn.qkv.bias)
            q, k, v = qkv.split(d, dim=-1)
            rec(p + "q", q)
            rec(p + "k", k)
            rec(p + "v", v)
            b, n, _ = x.shape
            q = q.reshape(b, n, nh, hd).transpose(1, 2)
            k = k.reshape(b, n, nh, hd).transpose(1, 2)
            v = v.reshape(b, n, nh, hd).transpose(1, 2)
            attn = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
            ctx = (attn @ v).transpose(1, 2).reshape(b, n, d)
            rec(p + "ctx", ctx)
            proj = nn.functional.linear(ctx, blk.attn.proj.weight, blk.attn.proj.bias)
            rec(p + "proj", proj)
            x = x + proj
            rec(p + "mid", x)
            if i in cfg.prune_layers:
                x = torch.stack([_prune_float(x[j], attn[j, :, 0, :], cfg.keep_rate)
                                 for j in range(b)])
            xn = nn.functional.layer_norm(x, (d,), blk.norm2.weight, blk.norm2.bias, LN_EPS)
            rec(p + "ln2", xn)
            h = nn.functional.linear(xn, blk.mlp.fc1.weight, blk.mlp.fc1.bias)
            rec(p + "fc1", h)
            h = nn.functional.gelu(h)
            rec(p + "gelu", h)
            h = nn.functional.linear(h, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
            rec(p + "fc2", h)
            x = x + h
            rec(p + "out", x)
        cls = nn.functional.layer_norm(x[:, 0], (d,), self.norm.weight, self.norm.bias, LN_EPS)
        rec("norm", cls)
        logits = self.head(cls)
        rec("logits", logits)
        return logits


# -- state dict --------------------------------------------------------------------------------

def load_state_dict(cfg: VitConfig, source) -> FloatViT:
    """Build a :class:`FloatViT` from a timm/DeiT-style state dict.

    ``source`` is a mapping of names to tensors, a ``.safetensors`` file, or a file for
    ``torch.load(weights_only=True)`` (never unpickling arbitrary objects). Raises
    ``ValueError`` naming the tensor for a missing, unexpected or mis-shaped tensor.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"state dict file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
    else:
        sd = source
    if not isinstance(sd, dict):
        raise ValueError(f"a state dict must be a mapping of names to tensors, "
                         f"not {type(sd).__name__}")
    shapes = expected_shapes(cfg)
    for name, shape in shapes.items():
        if name not in sd:
            raise ValueError(f"missing tensor {name!r} (expected shape {shape})")
    for name in sd:
        if name not in shapes:
            raise ValueError(f"unexpected tensor {name!r}; this model has no such parameter")
    for name, shape in shapes.items():
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"tensor {name!r} must be a torch.Tensor, not {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if not torch.is_floating_point(t) or not torch.isfinite(t).all():
            raise ValueError(f"tensor {name!r} must hold finite floating-point values")
    model = FloatViT(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


# -- weight sparsity --------------------------------------------------------------------------

def prune_weights(model: FloatViT, acfg: AccelConfig,
                  density: float | None = None) -> dict[str, BlockPattern]:
    """Block-prune the encoder's linear layers in place (balanced, blocks of
    :func:`golden.pruning.default_block`); returns the pattern of every pruned weight by
    parameter name. ``density`` defaults to the model config's ``weight_density``; at 1.0 the
    weights stay dense and no pattern is returned."""
    density = model.cfg.weight_density if density is None else density
    patterns = {}
    if density >= 1.0:
        return patterns
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            for layer in PRUNED_LAYERS:
                mod = blk.get_submodule(layer)
                pat = block_prune(mod.weight.detach().double().numpy(), density,
                                  default_block(acfg), balanced=True)
                mod.weight.copy_(torch.from_numpy(pat.apply(mod.weight.detach().numpy())))
                patterns[f"blocks.{i}.{layer}.weight"] = pat
    return patterns


# -- quantization ------------------------------------------------------------------------------

def calibrate(model: FloatViT, images) -> dict[str, float]:
    """Largest absolute value of every quantized activation over ``images`` (max-abs)."""
    record: dict[str, float] = {}
    with torch.no_grad():
        model(torch.as_tensor(images, dtype=torch.float32), record=record)
    return record


def _scale(maxabs: float, bits: int = 8) -> float:
    return max(maxabs, 1e-6) / ((1 << (bits - 1)) - 1)


@dataclass
class QLinear:
    """A quantized linear layer ``y = x @ W^T + b`` on the GEMM engine.

    ``w`` is the int8 weight ``[out, in]`` (zero where pruned), ``ep`` its epilogue, ``pattern``
    its block pattern (``None``: dense)."""
    w: np.ndarray
    ep: EpilogueParams
    pattern: BlockPattern | None = None
    out_bits: int = 8


@dataclass
class QBlock:
    ln1: LnParams
    qkv: QLinear
    qk: EpilogueParams          # Q.K^T -> int16 logits, scale 2**-8 (n = tokens)
    pv: EpilogueParams          # P.V -> context (n = head_dim)
    proj: QLinear
    add1: AddParams
    ln2: LnParams
    fc1: QLinear
    gelu: GeluParams
    fc2: QLinear
    add2: AddParams


@dataclass
class QuantViT:
    """The quantized model: integer parameters and the scales they came from."""
    cfg: VitConfig
    acfg: AccelConfig
    scales: dict
    patch: QLinear
    embed_add: AddParams
    embed: np.ndarray           # int8 [N, D]: row 0 CLS + pos[0] at the x0 scale,
    #                             rows 1.. pos[1:] at the embed scale
    blocks: list
    norm: LnParams
    head: QLinear
    patterns: dict = field(default_factory=dict)

    @property
    def logit_scale(self) -> float:
        return self.scales["logits"]


def _requant(real: float, acfg: AccelConfig) -> tuple[int, int]:
    return quantize_multiplier(real, acfg.mult_width, acfg.max_shift)


def _qlinear(weight, bias, s_in: float, s_out, acfg: AccelConfig, pattern=None,
             out_bits: int = 8) -> QLinear:
    """Per-output-channel symmetric int8 weights; ``s_out`` is a scalar or per-column."""
    w = np.asarray(weight, np.float64)
    bias = np.asarray(bias, np.float64)
    n = w.shape[0]
    s_w = np.maximum(np.abs(w).max(axis=1), 1e-12) / ((1 << (acfg.weight_width - 1)) - 1)
    w_int = np.stack([quantize(w[j], s_w[j], acfg.weight_width) for j in range(n)])
    s_acc = s_in * s_w
    lim = (1 << (acfg.acc_width - 1)) - 1
    b_int = np.clip(np.rint(bias / s_acc), -lim, lim).astype(np.int64)
    s_out = np.broadcast_to(np.asarray(s_out, np.float64), (n,))
    ms = [_requant(float(s_acc[j] / s_out[j]), acfg) for j in range(n)]
    ep = EpilogueParams(acfg, n, b_int, [m for m, _ in ms], [s for _, s in ms])
    return QLinear(w_int, ep, pattern, out_bits)


def _add_params(s_a: float, s_b: float, s_out: float, acfg: AccelConfig) -> AddParams:
    ra, rb = s_a / s_out, s_b / s_out
    _, shift = _requant(max(ra, rb), acfg)
    ma, mb = round(ra * (1 << shift)), round(rb * (1 << shift))
    return AddParams(ma, mb, shift)


def _ln(mod: nn.LayerNorm, s_in: float, s_out: float, acfg: AccelConfig) -> LnParams:
    return ln_params(mod.weight.detach().double().numpy(), mod.bias.detach().double().numpy(),
                     n=mod.weight.shape[0], scale_in=s_in, scale_out=s_out, eps=LN_EPS,
                     mult_width=acfg.mult_width)


def quantize_model(model: FloatViT, calib_images, acfg: AccelConfig,
                   patterns: dict | None = None) -> QuantViT:
    """Quantize ``model`` (already pruned, see :func:`prune_weights`) with activation scales
    calibrated (max-abs, per tensor) on ``calib_images``."""
    cfg = model.cfg
    if cfg.hidden > acfg.max_hidden or cfg.dim > acfg.max_dim \
            or cfg.num_patches + 1 > acfg.max_tokens or cfg.heads > acfg.max_heads:
        raise ValueError(f"the model (dim {cfg.dim}, hidden {cfg.hidden}, "
                         f"{cfg.num_patches + 1} tokens, {cfg.heads} heads) does not fit the "
                         f"accelerator (max_dim {acfg.max_dim}, max_hidden {acfg.max_hidden}, "
                         f"max_tokens {acfg.max_tokens}, max_heads {acfg.max_heads})")
    rec = calibrate(model, calib_images)
    s = {name: _scale(v) for name, v in rec.items()}
    s["logits"] = _scale(rec["logits"] * LOGIT_HEADROOM, 16)
    d, hd = cfg.dim, cfg.head_dim
    patterns = patterns or {}

    def np_(t):
        return t.detach().double().numpy()

    patch = _qlinear(np_(model.patch_embed.proj.weight.flatten(1)),
                     np_(model.patch_embed.proj.bias), s["input"], s["patch"], acfg)
    emb = np_(torch.cat([model.cls_token + model.pos_embed[:, :1], model.pos_embed[:, 1:]],
                        1)[0])
    embed = np.concatenate([quantize(emb[:1], s["x0"]), quantize(emb[1:], s["embed"])])
    embed_add = _add_params(s["patch"], s["embed"], s["x0"], acfg)
    blocks = []
    s_x = s["x0"]
    for i, blk in enumerate(model.blocks):
        p = f"b{i}."
        pre = f"blocks.{i}."
        s_qkv = np.repeat([s[p + "q"], s[p + "k"], s[p + "v"]], d)
        qkv = _qlinear(np_(blk.attn.qkv.weight), np_(blk.attn.qkv.bias), s[p + "ln1"], s_qkv,
                       acfg, patterns.get(pre + "attn.qkv.weight"))
        m_qk, sh_qk = _requant(s[p + "q"] * s[p + "k"] / math.sqrt(hd) * (1 << IN_FRAC), acfg)
        n_tok = acfg.max_tokens
        qk = EpilogueParams(acfg, n_tok, None, [m_qk] * n_tok, [sh_qk] * n_tok)
        m_pv, sh_pv = _requant(2.0 ** -OUT_FRAC * s[p + "v"] / s[p + "ctx"], acfg)
        pv = EpilogueParams(acfg, hd, None, [m_pv] * hd, [sh_pv] * hd)
        proj = _qlinear(np_(blk.attn.proj.weight), np_(blk.attn.proj.bias), s[p + "ctx"],
                        s[p + "proj"], acfg, patterns.get(pre + "attn.proj.weight"))
        add1 = _add_params(s_x, s[p + "proj"], s[p + "mid"], acfg)
        fc1 = _qlinear(np_(blk.mlp.fc1.weight), np_(blk.mlp.fc1.bias), s[p + "ln2"],
                       s[p + "fc1"], acfg, patterns.get(pre + "mlp.fc1.weight"))
        gp = gelu_params(s[p + "fc1"], s[p + "gelu"], in_bits=acfg.act_width,
                         mult_width=acfg.mult_width)
        fc2 = _qlinear(np_(blk.mlp.fc2.weight), np_(blk.mlp.fc2.bias), s[p + "gelu"],
                       s[p + "fc2"], acfg, patterns.get(pre + "mlp.fc2.weight"))
        add2 = _add_params(s[p + "mid"], s[p + "fc2"], s[p + "out"], acfg)
        blocks.append(QBlock(_ln(blk.norm1, s_x, s[p + "ln1"], acfg), qkv, qk, pv, proj, add1,
                             _ln(blk.norm2, s[p + "mid"], s[p + "ln2"], acfg), fc1, gp, fc2,
                             add2))
        s_x = s[p + "out"]
    norm = _ln(model.norm, s_x, s["norm"], acfg)
    head = _qlinear(np_(model.head.weight), np_(model.head.bias), s["norm"], s["logits"], acfg,
                    out_bits=16)
    return QuantViT(cfg, acfg, s, patch, embed_add, embed, blocks, norm, head, dict(patterns))


def quantize_input(q: QuantViT, images) -> np.ndarray:
    """Float images ``[B, C, H, W]`` -> int8 patches ``[B, num_patches, patch_dim]``."""
    x = patchify(torch.as_tensor(images, dtype=torch.float32), q.cfg.patch).double().numpy()
    return quantize(x, q.scales["input"], q.acfg.act_width)


# -- integer model -----------------------------------------------------------------------------

def _linear(q: QuantViT, layer: QLinear, x) -> np.ndarray:
    """Dense-on-pruned GEMM (bit-identical to the sparse schedule, see golden.sparse_format)."""
    return gemm_ext(q.acfg, x, layer.w.T, layer.ep, out_bits=layer.out_bits)


def _sub_ep(ep: EpilogueParams, acfg: AccelConfig, n: int) -> EpilogueParams:
    return EpilogueParams(acfg, n, ep.bias[:n], ep.mult[:n], ep.shift[:n])


def forward_int(q: QuantViT, patches, trace: dict | None = None) -> np.ndarray:
    """Integer ViT on int8 patches ``[num_patches, patch_dim]`` (one image) or a batch
    ``[B, num_patches, patch_dim]``; returns int16 logits (scale ``q.logit_scale``).

    ``trace`` (one image only), if given, receives named intermediate tensors."""
    patches = np.asarray(patches)
    if patches.ndim == 3:
        return np.stack([forward_int(q, p) for p in patches])
    cfg, acfg = q.cfg, q.acfg
    tr = trace if trace is not None else {}
    d, nh, hd = cfg.dim, cfg.heads, cfg.head_dim
    pe = _linear(q, q.patch, patches)
    x = np.concatenate([q.embed[:1], add_int(pe, q.embed[1:], q.embed_add, acfg.act_width)])
    tr["x0"] = x
    for i, blk in enumerate(q.blocks):
        n = x.shape[0]
        xn = layernorm_int(x, blk.ln1, acfg.act_width, acfg.act_width)
        qkv = _linear(q, blk.qkv, xn)
        ctx = np.zeros((n, d), np.int64)
        cls_probs = np.zeros((nh, n), np.int64)
        for h in range(nh):
            qh = qkv[:, h * hd:(h + 1) * hd]
            kh = qkv[:, d + h * hd:d + (h + 1) * hd]
            vh = qkv[:, 2 * d + h * hd:2 * d + (h + 1) * hd]
            logits = gemm_ext(acfg, qh, kh.T, _sub_ep(blk.qk, acfg, n), out_bits=16)
            probs = softmax_int(logits, acfg.max_tokens)
            cls_probs[h] = probs[0]
            ctx[:, h * hd:(h + 1) * hd] = gemm_ext(acfg, probs, vh, blk.pv, a_unsigned=True)
        proj = _linear(q, blk.proj, ctx)
        x = add_int(x, proj, blk.add1, acfg.act_width)
        if i in cfg.prune_layers:
            x = prune_tokens_attention(x, cls_probs, cfg.keep_rate, acfg).out
        tr[f"b{i}.mid"] = x
        xn = layernorm_int(x, blk.ln2, acfg.act_width, acfg.act_width)
        hdn = gelu_int(_linear(q, blk.fc1, xn), blk.gelu, acfg.act_width)
        x = add_int(x, _linear(q, blk.fc2, hdn), blk.add2, acfg.act_width)
        tr[f"b{i}.out"] = x
    cls = layernorm_int(x[:1], q.norm, acfg.act_width, acfg.act_width)
    # The head runs in chunks of at most max_tokens classes (the LOGIT buffer's width).
    head, step, out = q.head, acfg.max_tokens, []
    for c0 in range(0, cfg.num_classes, step):
        sl = slice(c0, min(cfg.num_classes, c0 + step))
        n = sl.stop - c0
        ep = EpilogueParams(acfg, n, head.ep.bias[sl], head.ep.mult[sl], head.ep.shift[sl])
        out.append(gemm_ext(acfg, cls, head.w[sl].T, ep, out_bits=16)[0])
    return np.concatenate(out)
