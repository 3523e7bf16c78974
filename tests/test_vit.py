import math

import numpy as np
import pytest
import torch

from golden.config import PRESETS
from golden.token_prune import keep_count
from golden.vit import (
    FloatViT,
    VitConfig,
    expected_shapes,
    forward_int,
    load_state_dict,
    patchify,
    prune_weights,
    quantize_input,
    quantize_model,
    tiny_vit_config,
    token_counts,
)

TINY = PRESETS["tiny"]


def _images(n, seed):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pruned():
    cfg = tiny_vit_config()
    model = FloatViT.random(cfg, seed=3)
    patterns = prune_weights(model, TINY)
    q = quantize_model(model, _images(8, 100), TINY, patterns)
    return model, patterns, q


def test_patch_embedding_conv_equals_linear():
    cfg = tiny_vit_config()
    model = FloatViT.random(cfg, seed=0)
    x = _images(2, 1)
    conv = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    lin = patchify(x, cfg.patch) @ model.patch_embed.proj.weight.flatten(1).T \
        + model.patch_embed.proj.bias
    torch.testing.assert_close(conv, lin, rtol=1e-5, atol=1e-5)


def test_parameter_names_follow_timm():
    cfg = tiny_vit_config()
    sd = FloatViT(cfg).state_dict()
    shapes = expected_shapes(cfg)
    assert set(sd) == set(shapes)
    for name, t in sd.items():
        assert tuple(t.shape) == shapes[name], name
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.1.norm1.weight",
                 "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.1.mlp.fc2.weight",
                 "norm.bias", "head.weight"):
        assert name in sd


def test_attention_matches_torch_sdpa():
    """The float block's attention equals torch's scaled_dot_product_attention."""
    cfg = tiny_vit_config(prune_layers=(), weight_density=1.0, depth=1)
    model = FloatViT.random(cfg, seed=5)
    rec = {}
    x = _images(2, 6)
    out = model(x, record=rec)
    # Recompute block 0 by hand with SDPA.
    blk = model.blocks[0]
    with torch.no_grad():
        tok = patchify(x, cfg.patch) @ model.patch_embed.proj.weight.flatten(1).T \
            + model.patch_embed.proj.bias
        h = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1),
                       tok + model.pos_embed[:, 1:]], 1)
        qkv = blk.attn.qkv(blk.norm1(h)).reshape(2, 17, 3, cfg.heads, cfg.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        h = h + blk.attn.proj(a.transpose(1, 2).reshape(2, 17, cfg.dim))
        h = h + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(h))))
        ref = model.head(model.norm(h[:, 0]))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_state_dict_round_trip(tmp_path):
    from safetensors.torch import save_file
    cfg = tiny_vit_config()
    model = FloatViT.random(cfg, seed=1)
    x = _images(2, 2)
    ref = model(x)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, str(tmp_path / "m.pth"))
    torch.save({"model": sd}, str(tmp_path / "ckpt.pth"))
    for src in (sd, tmp_path / "m.safetensors", tmp_path / "m.pth", tmp_path / "ckpt.pth"):
        torch.testing.assert_close(load_state_dict(cfg, src)(x), ref)


def test_state_dict_errors_name_the_tensor(tmp_path):
    cfg = tiny_vit_config()
    sd = FloatViT.random(cfg, seed=1).state_dict()
    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.weight"}
    with pytest.raises(ValueError, match=r"missing tensor 'blocks.1.attn.qkv.weight' "
                                         r"\(expected shape \(96, 32\)\)"):
        load_state_dict(cfg, missing)
    bad = dict(sd, **{"head.weight": torch.zeros(5, 32)})
    with pytest.raises(ValueError, match=r"tensor 'head.weight' has shape \(5, 32\), "
                                         r"expected \(10, 32\)"):
        load_state_dict(cfg, bad)
    extra = dict(sd, dist_token=torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match="unexpected tensor 'dist_token'"):
        load_state_dict(cfg, extra)
    nan = dict(sd, **{"norm.bias": torch.full((32,), float("nan"))})
    with pytest.raises(ValueError, match="tensor 'norm.bias' must hold finite"):
        load_state_dict(cfg, nan)
    with pytest.raises(ValueError, match="does not exist"):
        load_state_dict(cfg, tmp_path / "none.safetensors")
    torch.save({"x": torch.zeros(1)}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="missing tensor 'cls_token'"):
        load_state_dict(cfg, tmp_path / "other.pth")


def test_state_dict_file_is_not_unpickled(tmp_path):
    import decimal
    torch.save({"obj": decimal.Decimal(1)}, str(tmp_path / "evil.pth"))
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_state_dict(tiny_vit_config(), tmp_path / "evil.pth")


def test_config_validation():
    with pytest.raises(ValueError, match=r"dim \(30\) must be a multiple of heads \(4\)"):
        VitConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match=r"img_size \(15\) must be a multiple of patch"):
        VitConfig(img_size=15)
    with pytest.raises(ValueError, match=r"prune_layers entries must be in the range \[0, 1\]"):
        VitConfig(prune_layers=(2,))
    with pytest.raises(ValueError, match=r"keep_rate must be in the range \(0, 1\]"):
        VitConfig(keep_rate=0.0)
    with pytest.raises(ValueError, match=r"weight_density must be in the range"):
        VitConfig(weight_density=1.5)
    with pytest.raises(TypeError, match="heads must be an integer"):
        VitConfig(heads=2.0)


def test_model_must_fit_accelerator():
    cfg = VitConfig(dim=64, heads=2)
    with pytest.raises(ValueError, match="does not fit the accelerator"):
        quantize_model(FloatViT.random(cfg), _images(2, 0), TINY)


def test_token_counts():
    assert token_counts(tiny_vit_config()) == [10, 10, 10]
    assert token_counts(tiny_vit_config(prune_layers=(0, 1))) == [10, 7, 7]
    assert token_counts(tiny_vit_config(prune_layers=())) == [17, 17, 17]
    assert keep_count(17, 0.5) == 8


def test_prune_weights_block_sparse(pruned):
    model, patterns, q = pruned
    assert len(patterns) == 4 * model.cfg.depth
    for name, pat in patterns.items():
        w = model.state_dict()[name].numpy()
        assert pat.block == (TINY.cols, TINY.rows)
        assert abs(pat.block_density - 0.5) < 1e-9
        assert np.all(w[~pat.element_mask()] == 0)
    assert np.all(q.blocks[0].fc1.w[~patterns["blocks.0.mlp.fc1.weight"].element_mask()] == 0)


def test_integer_model_runs_and_prunes_tokens(pruned):
    model, _, q = pruned
    patches = quantize_input(q, _images(1, 7))[0]
    assert patches.shape == (16, 48)
    trace = {}
    logits = forward_int(q, patches, trace)
    assert logits.shape == (10,)
    assert trace["x0"].shape == (17, 32)
    assert trace["b0.mid"].shape == (10, 32)       # CLS + 8 kept + package token
    assert trace["b1.out"].shape == (10, 32)
    assert np.abs(logits).max() < 1 << 15


def _agreement(model, q, images):
    with torch.no_grad():
        ref = model(images).numpy()
    got = forward_int(q, quantize_input(q, images)) * q.logit_scale
    top1 = float((ref.argmax(1) == got.argmax(1)).mean())
    err = float(np.abs(ref - got).max() / np.abs(ref).max())
    return top1, err


@pytest.mark.parametrize("variant", ["pruned", "dense"])
def test_integer_agrees_with_float(variant, pruned):
    if variant == "pruned":
        model, _, q = pruned
    else:
        cfg = tiny_vit_config(prune_layers=(), weight_density=1.0)
        model = FloatViT.random(cfg, seed=3)
        q = quantize_model(model, _images(8, 100), TINY)
    top1, err = _agreement(model, q, _images(48, 200))
    assert top1 >= 0.85, f"top-1 agreement {top1:.3f}"
    assert err < 0.2, f"max logit error {err:.3f} of the largest logit"


def test_quantization_scales(pruned):
    _, _, q = pruned
    blk = q.blocks[0]
    # Attention logits land on the softmax input scale 2**-8 with 1/sqrt(d_head) folded in.
    real = q.scales["b0.q"] * q.scales["b0.k"] / math.sqrt(16) * 256
    assert abs(blk.qk.mult[0] / 2.0 ** blk.qk.shift[0] / real - 1) < 1e-3
    # The residual add scales both operands onto the output scale.
    ratio = q.scales["x0"] / q.scales["b0.mid"]
    assert abs(blk.add1.ma / 2.0 ** blk.add1.shift / ratio - 1) < 1e-3
    assert q.head.out_bits == 16
