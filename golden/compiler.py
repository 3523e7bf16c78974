"""Compiler: a quantized, pruned ViT (:class:`golden.vit.QuantViT`) -> program + memory image.

The program is a list of :class:`golden.isa.Instr` (``docs/isa.md``); the memory image is the
external memory the accelerator starts from:

=============  =================================================================================
offset 0       input: ``num_patches x patch_dim`` int8 patches (row pitch ``patch_dim``)
16-aligned     output: ``num_classes`` int16 logits (written by the final STORE)
16-aligned     constants, each 16-byte aligned: the embedding rows, per GEMM its weights (dense in
               engine order, or a compressed block-sparse stream) and epilogue record, the
               LayerNorm / GELU / ADD records
=============  =================================================================================

Lowering of one encoder block with ``n`` tokens (``x`` in an activation bank, three free banks
``t1``..``t3`` picked by a simple allocator so that no instruction writes a bank it reads)::

    LAYERNORM x -> t1                  GEMM qkv t1 -> t2 (n x 3D)
    per head h:  GEMM  Q_h . K_h^T -> LOGIT (B_BUF | B_T | OUT16, int16 scale 2**-8)
                 SOFTMAX LOGIT -> PROB (SCORE: CLS row -> score row h, pruning blocks only)
                 GEMM  PROB . V_h -> t3[:, h*dh] (B_BUF | A_U8)
    GEMM proj t3 -> t1                 ADD x, t1 -> mid
    [TOKEN_SELECT mid -> x'  (pruning blocks; n becomes keep + 1 (+ 1 package token))]
    LAYERNORM -> u1   GEMM fc1 -> u2   GELU -> u1   GEMM fc2 -> u2   ADD mid, u2 -> x_next

The embedding is LOAD patches, LOAD position rows, LOAD the CLS row, GEMM patch_embed, ADD (the
LOADs first, so that the ADD and the first LAYERNORM follow a unit that leaves the memory port
free for their records, ``docs/accelerator.md``); the end is LAYERNORM of the CLS row, the head
GEMM (OUT16, in chunks of at most ``max_tokens`` classes, the LOGIT buffer's width), STORE,
HALT.

Every instruction carries a label (``Compiled.labels``, e.g. ``"b0.h1.qk"``) for reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .gemm import EpilogueParams
from .isa import (
    ACT_BANKS,
    Buf,
    Flag,
    Instr,
    Op,
    Operand,
    encode_program,
    pack_add,
    pack_dense_weights,
    pack_epilogue,
    pack_gelu,
    pack_ln,
    validate_program,
)
from .sparse_format import encode
from .token_prune import keep_count
from .vit import QLinear, QuantViT

__all__ = ["ALIGN", "Compiled", "compile_model"]

ALIGN = 16


@dataclass
class Compiled:
    """A compiled model: program, labels, memory image and where the input and output live."""
    program: list
    labels: list
    image: bytes
    input_addr: int
    input_shape: tuple
    output_addr: int
    num_classes: int
    quant: QuantViT = field(repr=False, default=None)

    @property
    def program_bytes(self) -> bytes:
        return encode_program(self.program)

    def memory_with_input(self, patches) -> bytearray:
        """A copy of the image with the int8 ``patches`` (``input_shape``) written in."""
        p = np.asarray(patches)
        if p.shape != self.input_shape:
            raise ValueError(f"patches must have shape {self.input_shape}, not {p.shape}")
        if p.min() < -128 or p.max() > 127:
            raise ValueError("patches must be int8 values")
        mem = bytearray(self.image)
        data = p.astype(np.int8).tobytes()
        mem[self.input_addr:self.input_addr + len(data)] = data
        return mem

    def read_logits(self, memory) -> np.ndarray:
        """The int16 logits the program stored."""
        raw = bytes(memory[self.output_addr:self.output_addr + 2 * self.num_classes])
        return np.frombuffer(raw, "<i2").astype(np.int64)

    def listing(self) -> str:
        return "\n".join(f"{i:4d} {lab:14s} {ins}"
                         for i, (ins, lab) in enumerate(zip(self.program, self.labels)))


class _Builder:
    def __init__(self, q: QuantViT):
        self.q = q
        self.acfg = q.acfg
        self.program: list[Instr] = []
        self.labels: list[str] = []
        self.image = bytearray()
        self._cache: dict = {}

    def blob(self, data: bytes, key=None) -> int:
        if key is not None and key in self._cache:
            return self._cache[key]
        self.image += bytes(-len(self.image) % ALIGN)
        addr = len(self.image)
        self.image += data
        if key is not None:
            self._cache[key] = addr
        return addr

    def reserve(self, size: int) -> int:
        return self.blob(bytes(size))

    def emit(self, label: str, op: Op, **kw):
        self.program.append(Instr(int(op), **kw))
        self.labels.append(label)

    def linear(self, label: str, layer: QLinear, a: Operand, dst: Operand, m: int,
               cols: slice | None = None, flags: int = 0):
        """GEMM of ``a`` (m x in) by ``layer`` (optionally output columns ``cols`` only)."""
        acfg = self.acfg
        w = layer.w if cols is None else layer.w[cols]
        n, k = w.shape
        idx = np.arange(layer.ep.bias.size)[cols if cols is not None else slice(None)]
        ep = EpilogueParams(acfg, n, layer.ep.bias[idx], layer.ep.mult[idx],
                            layer.ep.shift[idx])
        ep_addr = self.blob(pack_epilogue(acfg, ep))
        imm = 0
        if layer.pattern is not None and cols is None:
            data = encode(w, layer.pattern)
            flags |= Flag.SPARSE
            imm = len(data)
        else:
            data = pack_dense_weights(acfg, w.T)
        w_addr = self.blob(data)
        if layer.out_bits == 16:
            flags |= Flag.OUT16
        self.emit(label, Op.GEMM, flags=int(flags), m=m, k=k, n=n, dst=dst, a=a, addr=w_addr,
                  addr2=ep_addr, imm=imm)


def _free(*used):
    return [b for b in ACT_BANKS if b not in used]


def compile_model(q: QuantViT) -> Compiled:
    """Lower ``q`` into a program and a memory image (see the module docstring)."""
    cfg, acfg = q.cfg, q.acfg
    bld = _Builder(q)
    npch, pdim, d, nh, hd = cfg.num_patches, cfg.patch_dim, cfg.dim, cfg.heads, cfg.head_dim
    in_addr = bld.reserve(npch * pdim)
    out_addr = bld.reserve(2 * cfg.num_classes)
    embed_addr = bld.blob(q.embed.astype(np.int8).tobytes())

    # Embedding.
    x = Buf.ACT0
    bld.emit("embed.load", Op.LOAD, m=npch, n=pdim, dst=Operand(Buf.ACT1, 1, 0), addr=in_addr,
             imm=pdim)
    bld.emit("embed.pos", Op.LOAD, m=npch, n=d, dst=Operand(Buf.ACT3, 1, 0),
             addr=embed_addr + d, imm=d)
    bld.emit("embed.cls", Op.LOAD, m=1, n=d, dst=Operand(x, 0, 0), addr=embed_addr, imm=d)
    bld.linear("embed.patch", q.patch, Operand(Buf.ACT1, 1, 0), Operand(Buf.ACT2, 1, 0), npch)
    bld.emit("embed.add", Op.ADD, m=npch, n=d, dst=Operand(x, 1, 0), a=Operand(Buf.ACT2, 1, 0),
             b=Operand(Buf.ACT3, 1, 0), addr=bld.blob(pack_add(q.embed_add)))

    n = npch + 1
    for i, blk in enumerate(q.blocks):
        p = f"b{i}."
        prune = i in cfg.prune_layers
        t1, t2, t3 = _free(x)
        bld.emit(p + "ln1", Op.LAYERNORM, m=n, n=d, a=Operand(x), dst=Operand(t1),
                 addr=bld.blob(pack_ln(blk.ln1)))
        bld.linear(p + "qkv", blk.qkv, Operand(t1), Operand(t2), n)
        qk_ep = EpilogueParams(acfg, n, blk.qk.bias[:n], blk.qk.mult[:n], blk.qk.shift[:n])
        qk_addr = bld.blob(pack_epilogue(acfg, qk_ep))
        pv_addr = bld.blob(pack_epilogue(acfg, blk.pv))
        for h in range(nh):
            hp = f"{p}h{h}."
            bld.emit(hp + "qk", Op.GEMM, flags=int(Flag.B_BUF | Flag.B_T | Flag.OUT16), m=n,
                     k=hd, n=n, a=Operand(t2, 0, h * hd), b=Operand(t2, 0, d + h * hd),
                     dst=Operand(Buf.LOGIT), addr2=qk_addr)
            bld.emit(hp + "softmax", Op.SOFTMAX, flags=int(Flag.SCORE) if prune else 0, m=n,
                     n=n, a=Operand(Buf.LOGIT), dst=Operand(Buf.PROB), imm=h if prune else 0)
            bld.emit(hp + "pv", Op.GEMM, flags=int(Flag.B_BUF | Flag.A_U8), m=n, k=n, n=hd,
                     a=Operand(Buf.PROB), b=Operand(t2, 0, 2 * d + h * hd),
                     dst=Operand(t3, 0, h * hd), addr2=pv_addr)
        bld.linear(p + "proj", blk.proj, Operand(t3), Operand(t1), n)
        mid = t2
        bld.emit(p + "add1", Op.ADD, m=n, n=d, a=Operand(x), b=Operand(t1), dst=Operand(mid),
                 addr=bld.blob(pack_add(blk.add1)))
        if prune:
            k = keep_count(n, cfg.keep_rate)
            bld.emit(p + "select", Op.TOKEN_SELECT, m=n, n=d, k=nh, a=Operand(mid),
                     dst=Operand(x), imm=k)
            n = k + 1 + (1 if k < n - 1 else 0)
            mid = x
        u1, u2, u3 = _free(mid)
        bld.emit(p + "ln2", Op.LAYERNORM, m=n, n=d, a=Operand(mid), dst=Operand(u1),
                 addr=bld.blob(pack_ln(blk.ln2)))
        bld.linear(p + "fc1", blk.fc1, Operand(u1), Operand(u2), n)
        bld.emit(p + "gelu", Op.GELU, m=n, n=cfg.hidden, a=Operand(u2), dst=Operand(u1),
                 addr=bld.blob(pack_gelu(blk.gelu)))
        bld.linear(p + "fc2", blk.fc2, Operand(u1), Operand(u2), n)
        bld.emit(p + "add2", Op.ADD, m=n, n=d, a=Operand(mid), b=Operand(u2), dst=Operand(u3),
                 addr=bld.blob(pack_add(blk.add2)))
        x = u3

    t1 = _free(x)[0]
    bld.emit("norm", Op.LAYERNORM, m=1, n=d, a=Operand(x), dst=Operand(t1),
             addr=bld.blob(pack_ln(q.norm)))
    step = acfg.max_tokens
    for c0 in range(0, cfg.num_classes, step):
        c1 = min(cfg.num_classes, c0 + step)
        bld.linear(f"head.{c0}", q.head, Operand(t1), Operand(Buf.LOGIT), 1, slice(c0, c1))
        bld.emit(f"head.store.{c0}", Op.STORE, flags=int(Flag.OUT16), m=1, n=c1 - c0,
                 a=Operand(Buf.LOGIT), addr=out_addr + 2 * c0, imm=2 * (c1 - c0))
    bld.emit("halt", Op.HALT)
    image = bytes(bld.image) + bytes(-len(bld.image) % ALIGN)
    validate_program(bld.program, acfg, len(image))
    return Compiled(bld.program, bld.labels, image, in_addr, (npch, pdim), out_addr,
                    cfg.num_classes, q)


# -- the tiny test model and a report -------------------------------------------------------

def build_tiny(acfg=None, seed: int = 0, calib: int = 8, **vit_kw):
    """The tiny ViT of the tests with random weights (``golden.vit.tiny_vit_config`` plus
    ``vit_kw``), pruned, quantized on ``calib`` random images and compiled.

    Returns ``(float_model, quant_model, compiled)``."""
    import torch

    from .config import PRESETS
    from .vit import FloatViT, prune_weights, quantize_model, tiny_vit_config
    acfg = PRESETS["tiny"] if acfg is None else acfg
    cfg = tiny_vit_config(**vit_kw)
    model = FloatViT.random(cfg, seed=seed)
    patterns = prune_weights(model, acfg)
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(calib, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    q = quantize_model(model, images, acfg, patterns)
    return model, q, compile_model(q)


def array_steps(compiled: Compiled, trace) -> int:
    """Array occupancy of the program's GEMMs: per GEMM ``ceil(m / rows)`` times, per output
    tile, ``max(k steps, rows, cols)`` (the engine's tile period; kept ``k`` only for sparse
    GEMMs). A lower bound on GEMM cycles without load, fill and drain (those need the RTL's
    timing model in ``sim/perf.py``)."""
    cfg = compiled.quant.acfg
    period = max(cfg.rows, cfg.cols)
    total = 0
    for t in trace:
        ins = t.instr
        if ins.op != Op.GEMM:
            continue
        mt = -(-ins.m // cfg.rows)
        nt = -(-ins.n // cfg.cols)
        if ins.flags & Flag.SPARSE:
            # k steps are spread over the tiles; balanced patterns give equal lists.
            per_tile = t.info["k_steps"] / nt
            total += mt * nt * max(per_tile, period)
        else:
            total += mt * nt * max(ins.k, period)
    return int(total)


def report(images: int = 32, seed: int = 0) -> dict:
    """Integer-vs-float agreement and work (MACs, array steps) of the tiny model with and
    without token pruning and weight sparsity."""
    import torch

    from .executor import execute
    from .vit import forward_int, quantize_input
    variants = {"pruned+sparse": {}, "sparse only": {"prune_layers": ()},
                "pruned only": {"weight_density": 1.0},
                "dense": {"prune_layers": (), "weight_density": 1.0}}
    out = {}
    g = torch.Generator().manual_seed(seed + 1000)
    test = None
    for name, kw in variants.items():
        model, q, c = build_tiny(seed=seed, **kw)
        if test is None:
            cfg = q.cfg
            test = torch.randn(images, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
        with torch.no_grad():
            ref = model(test).numpy()
        patches = quantize_input(q, test)
        got = forward_int(q, patches) * q.logit_scale
        res = execute(c.program, c.memory_with_input(patches[0]), q.acfg)
        exact = bool(np.array_equal(c.read_logits(res.memory), forward_int(q, patches[0])))
        stats = res.stats()
        out[name] = {
            "instructions": len(c.program), "image_bytes": len(c.image),
            "gemm_macs": stats["GEMM"]["macs"], "array_steps": array_steps(c, res.trace),
            "ideal_steps": stats["GEMM"]["macs"] / q.acfg.pes,
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
            "mean_logit_error": float(np.abs(ref - got).mean()),
            "max_logit_error": float(np.abs(ref - got).max()),
            "logit_rms": float(np.sqrt((ref ** 2).mean())),
            "executor_bit_exact": exact,
        }
    return out


def main(argv=None) -> int:
    import json

    from .cli import ArgumentParser
    ap = ArgumentParser(prog="python -m golden.compiler",
                        description="Compile the tiny ViT; report agreement and work.")
    ap.add_argument("--images", type=int, default=32, help="test images (default 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--listing", action="store_true", help="print the program")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.listing:
        print(build_tiny(seed=args.seed)[2].listing())
        return 0
    rep = report(args.images, args.seed)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    cols = ["instructions", "gemm_macs", "array_steps", "ideal_steps", "top1_agreement",
            "mean_logit_error", "max_logit_error", "logit_rms", "executor_bit_exact"]
    print(f"{'variant':14s} " + " ".join(f"{c[:12]:>12s}" for c in cols))
    for name, r in rep.items():
        cells = [f"{r[c]:12.3f}" if isinstance(r[c], float) else f"{r[c]!s:>12s}"
                 for c in cols]
        print(f"{name:14s} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
