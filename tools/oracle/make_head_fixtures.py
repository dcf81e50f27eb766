"""The reference oracle: run mmsegmentation 1.2.2's real attention heads once and save what they
compute, so the native heads in danet/ can be tested against the reference without mmcv or mmseg.

Runs ONLY in the oracle venv (/work/venv-oracle, see tools/oracle/README.md), never in the
project's venv or in CI:

    /work/venv-oracle/bin/python tools/oracle/make_head_fixtures.py            # all heads + key listings
    /work/venv-oracle/bin/python tools/oracle/make_head_fixtures.py nl cc      # some heads only
    /work/venv-oracle/bin/python tools/oracle/make_head_fixtures.py --keys     # key listings only

For each head it builds the real mmseg class at small widths (on 9x11 feature maps, h != w), with a
fixed seed and non-trivial parameters (every weight, bias, BN running statistic, LayerNorm, gamma
and EMA basis randomized; no zero-initialised branch left at zero), in eval mode, runs one fixed
random list of backbone features, and writes ``tests/fixtures/mmseg/<head>.safetensors`` holding

- ``decode_head.*``: the head's state dict under mmseg's own key names (OCR: ``decode_head.0.*``
  for the FCNHead stage and ``decode_head.1.*`` for the OCRHead stage);
- ``inputs.0`` .. ``inputs.3``: the backbone features the head is given (it picks by in_index);
- ``logits`` (and DA's ``logits_pam``/``logits_cam``, OCR's ``logits_coarse``): the head's output;
- the attention objects and the tensors around them, captured from the real forward (module
  forward hooks, and ``Tensor.softmax``/``Tensor.sigmoid``/``F.normalize`` wrapped while it runs),
  never recomputed by this script;
- safetensors metadata ``oracle``: a JSON string with the head's config kwargs, versions, seed,
  and one line per saved tensor saying what it is.

mmcv-lite has no compiled ops and mmseg's model package imports ``mmcv.ops``, whose ``__init__``
imports every compiled op. So before mmseg is imported, ``mmcv.ops`` is replaced by a stub
package that loads the REAL pure-PyTorch files ``mmcv/ops/cc_attention.py`` (CrissCrossAttention)
and ``mmcv/ops/point_sample.py`` from the installed mmcv-lite, plus ONE replacement: ``PSAMask``,
a compiled op in mmcv, is given here as a literal PyTorch port of mmcv's CPU kernel
(``mmcv/ops/csrc/pytorch/cpu/psamask.cpp``, forward only; see ``PSAMaskCPUPort``).

Also writes key/shape listings of the full models at the published widths
(``resnetv1c50_keys.json``, ``resnetv1c101_keys.json``, ``<head>_cityscapes_keys.json``), built from
mmseg's own shipped configs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
import types
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "mmseg"
SEED = 20260
H, W = 9, 11              # the d8 feature grid of every fixture (h != w on purpose)
K = 5                     # classes
IN_CH = (4, 8, 24, 40)   # backbone stage widths (layer1..layer4) at this tiny scale
BN = {"type": "BN", "requires_grad": True}   # the configs' SyncBN, as BN: same key names
MAX_FILE = 300_000


# ---- mmcv.ops without compiled ops -----------------------------------------------------------

class PSAMaskCPUPort(nn.Module):
    """mmcv's ``PSAMask`` forward, ported literally from mmcv 2.1.0's CPU kernel
    ``psamask_collect_forward`` / ``psamask_distribute_forward`` (psamask.cpp): for each feature
    cell (h, w) the kernel copies the cell's mask channels (hidx, widx) of the window
    [hstart, hend) x [wstart, wend) into a zero-filled (N, h*w, h, w) buffer, at
    [t, h, w] (collect) or [h*w_feature + w, t] (distribute), where t is the feature cell
    (hidx + h - half_h_mask, widx + w - half_w_mask). The two inner loops are one slice copy."""

    def __init__(self, psa_type, mask_size=None):
        super().__init__()
        assert psa_type in ("collect", "distribute")
        self.psa_type = psa_type
        self.mask_size = mask_size

    def forward(self, mask):
        n, channels, hf, wf = mask.shape
        hm, wm = self.mask_size
        assert channels == hm * wm
        half_h, half_w = (hm - 1) // 2, (wm - 1) // 2
        src = mask.view(n, hm, wm, hf, wf)
        buf = mask.new_zeros((n, hf, wf, hf, wf))
        for h in range(hf):
            for w in range(wf):
                hstart, hend = max(0, half_h - h), min(hm, hf + half_h - h)
                wstart, wend = max(0, half_w - w), min(wm, wf + half_w - w)
                vals = src[:, hstart:hend, wstart:wend, h, w]
                ty = slice(hstart + h - half_h, hend + h - half_h)
                tx = slice(wstart + w - half_w, wend + w - half_w)
                if self.psa_type == "collect":
                    buf[:, ty, tx, h, w] = vals
                else:
                    buf[:, h, w, ty, tx] = vals
        return buf.view(n, hf * wf, hf, wf)


def check_psamask_port():
    """The slice copy above against the kernel's own six nested scalar loops, both modes."""
    gen = torch.Generator().manual_seed(0)
    for hf, wf, hm, wm in ((4, 5, 5, 7), (5, 6, 3, 3), (3, 7, 7, 9)):
        mask = torch.randn((2, hm * wm, hf, wf), generator=gen)
        for psa_type in ("collect", "distribute"):
            ref = torch.zeros(2 * hf * wf * hf * wf)
            flat = mask.reshape(-1)
            half_h, half_w = (hm - 1) // 2, (wm - 1) // 2
            for n in range(2):
                for h in range(hf):
                    for w in range(wf):
                        for hidx in range(max(0, half_h - h), min(hm, hf + half_h - h)):
                            for widx in range(max(0, half_w - w), min(wm, wf + half_w - w)):
                                t = (hidx + h - half_h) * wf + (widx + w - half_w)
                                if psa_type == "collect":
                                    dst = (n * hf * wf + t) * hf * wf + h * wf + w
                                else:
                                    dst = (n * hf * wf + h * wf + w) * hf * wf + t
                                ref[dst] = flat[((n * hm * wm + hidx * wm + widx) * hf + h) * wf + w]
            got = PSAMaskCPUPort(psa_type, (hm, wm))(mask)
            assert torch.equal(got.reshape(-1), ref), f"PSAMask port differs ({psa_type}, {hf}x{wf}, {hm}x{wm})"


def _dump_json(obj) -> str:
    """Indented JSON with each shape list on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*([-\d,\s]*?)\s*\]", lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
                  text) + "\n"


def install_mmcv_ops_stub():
    """Make ``import mmcv.ops`` give the real pure-PyTorch op files, without mmcv/ops/__init__."""
    import mmcv

    ops_dir = Path(mmcv.__file__).parent / "ops"
    stub = types.ModuleType("mmcv.ops")
    stub.__path__ = [str(ops_dir)]           # submodules load from the real files
    sys.modules["mmcv.ops"] = stub
    mmcv.ops = stub
    stub.CrissCrossAttention = importlib.import_module("mmcv.ops.cc_attention").CrissCrossAttention
    stub.point_sample = importlib.import_module("mmcv.ops.point_sample").point_sample
    stub.PSAMask = PSAMaskCPUPort

    def compiled_only(*args, **kwargs):
        raise RuntimeError("a compiled mmcv op; not available in the oracle")
    stub.sigmoid_focal_loss = compiled_only


def import_mmseg():
    install_mmcv_ops_stub()
    import mmcv
    import mmengine
    import mmseg
    import mmseg.models
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    if mmseg.__version__ != "1.2.2":
        sys.exit(f"the oracle needs mmsegmentation 1.2.2, found {mmseg.__version__}")
    register_all_modules()
    versions = {"mmsegmentation": mmseg.__version__, "mmcv": mmcv.__version__,
                "mmengine": mmengine.__version__, "torch": torch.__version__}
    return MODELS, versions


# ---- recording the real forward ---------------------------------------------------------------

def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    return None


class Recorder:
    """While active: every module call (inputs cloned on entry, output on exit) and every
    softmax / sigmoid / F.normalize result, tagged with the innermost module then running."""

    def __init__(self, root: nn.Module):
        self.root = root
        self.stack: list[str] = []
        self.calls = defaultdict(list)          # name -> [(args, output)]
        self.ops: list[dict] = []

    def __enter__(self):
        self.handles = []
        for name, mod in self.root.named_modules():
            self.handles.append(mod.register_forward_pre_hook(partial(self._pre, name)))
            self.handles.append(mod.register_forward_hook(partial(self._post, name)))
        self._orig = (torch.Tensor.softmax, torch.Tensor.sigmoid, F.normalize)
        orig_softmax, orig_sigmoid, orig_normalize = self._orig

        def softmax(t, *args, **kwargs):
            out = orig_softmax(t, *args, **kwargs)
            dim = args[0] if args else kwargs.get("dim")
            self._op("softmax", t, out, dim=dim)
            return out

        def sigmoid(t):
            out = orig_sigmoid(t)
            self._op("sigmoid", t, out)
            return out

        def normalize(t, p=2.0, dim=1, eps=1e-12, out=None):
            res = orig_normalize(t, p=p, dim=dim, eps=eps, out=out)
            self._op("normalize", t, res, dim=dim, p=p)
            return res

        torch.Tensor.softmax, torch.Tensor.sigmoid, F.normalize = softmax, sigmoid, normalize
        return self

    def __exit__(self, *exc):
        torch.Tensor.softmax, torch.Tensor.sigmoid, F.normalize = self._orig
        for handle in self.handles:
            handle.remove()

    def _pre(self, name, mod, args):
        self.stack.append(name)
        self.calls[name].append([_clone(args), None])

    def _post(self, name, mod, args, out):
        self.stack.pop()
        self.calls[name][-1][1] = _clone(out)

    def _op(self, op, inp, out, **info):
        self.ops.append(dict(module=self.stack[-1] if self.stack else "", op=op,
                             input=inp.detach().clone(), output=out.detach().clone(), **info))

    def op(self, module: str, op: str) -> list[dict]:
        return [r for r in self.ops if r["module"] == module and r["op"] == op]

    def inp(self, module: str, call: int = 0, arg: int = 0) -> torch.Tensor:
        return self.calls[module][call][0][arg]

    def out(self, module: str, call: int = 0):
        return self.calls[module][call][1]


# ---- deterministic, non-trivial parameters ---------------------------------------------------

def randomize(module: nn.Module, gen: torch.Generator, gains: dict[str, float] | None = None,
              scales: dict[str, float] | None = None):
    """Every parameter and statistic random (so a branch that mmseg zero-initialises contributes):
    conv weights N(0, 1/fan_in) times a per-module gain, biases N(0, 0.1^2), BN and LayerNorm
    affine around (1, 0), running_mean N(0, 0.1^2), running_var U(0.5, 1.5), EMA bases random
    unit columns, and each ``Scale`` (gamma) the value given in ``scales``."""
    gains, scales = gains or {}, scales or {}

    def rnd(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    def unif(shape, lo, hi):
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for name, mod in module.named_modules():
            gain = next((g for pre, g in gains.items() if name == pre or name.startswith(pre + ".")), 1.0)
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(rnd(mod.weight.shape, gain / math.sqrt(fan_in)))
                if mod.bias is not None:
                    mod.bias.copy_(rnd(mod.bias.shape, 0.1))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.copy_(unif(mod.weight.shape, 0.5, 1.5))
                mod.bias.copy_(rnd(mod.bias.shape, 0.1))
                mod.running_mean.copy_(rnd(mod.running_mean.shape, 0.1))
                mod.running_var.copy_(unif(mod.running_var.shape, 0.5, 1.5))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(rnd(mod.weight.shape, 0.2, 1.0))
                mod.bias.copy_(rnd(mod.bias.shape, 0.1))
            elif type(mod).__name__ == "Scale":
                mod.scale.fill_(scales[name])
            elif type(mod).__name__ == "EMAModule":
                mod.bases.copy_(F.normalize(rnd(mod.bases.shape), dim=1, p=2))
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[0]
            mods = dict(module.named_modules())
            assert isinstance(mods[leaf], (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm,
                                           nn.LayerNorm)) or type(mods[leaf]).__name__ == "Scale", name


def make_inputs(gen: torch.Generator, h: int = H, w: int = W) -> list[torch.Tensor]:
    """Four backbone stages of a d8 ResNet (layer1 at stride 4, layer2-4 at stride 8),
    non-negative like post-ReLU features."""
    sizes = [(2 * h, 2 * w), (h, w), (h, w), (h, w)]
    return [F.relu(torch.randn((1, c, *hw), generator=gen) + 0.5) for c, hw in zip(IN_CH, sizes)]


# ---- the heads -------------------------------------------------------------------------------

def head_cfg(type_, in_channels=40, in_index=3, channels=20, **kw):
    return dict(type=type_, in_channels=in_channels, in_index=in_index, channels=channels,
                dropout_ratio=0.1, num_classes=K, norm_cfg=BN, align_corners=False, **kw)


def cap_nl(head, rec, block="nl_block", tag="nl"):
    eg = rec.eg_calls[0]
    return {
        f"{tag}.x": (rec.inp(block), "input of the non-local block (convs.0 output), (1, C, h, w)"),
        f"{tag}.theta": (eg["theta"], "theta(x) as (1, N, d): the queries handed to embedded_gaussian"),
        f"{tag}.phi": (eg["phi"], "phi(x) as (1, d, N): the keys handed to embedded_gaussian"),
        f"{tag}.g": (rec.out(f"{block}.g"), "g(x), the values, (1, d, h, w)"),
        f"{tag}.attn": (eg["out"], "softmax over keys (last axis) of theta.phi / sqrt(d), (1, N, N); row p = query p"),
        f"{tag}.out": (rec.out(block), "x + conv_out(attn @ g), the block's output, (1, C, h, w)"),
    }


def cap_dnl(head, rec):
    eg = rec.eg_calls[0]
    unary = [r for r in rec.op("dnl_block", "softmax") if r["output"].shape[1] == 1]   # not the pairwise one
    assert len(unary) == 1 and len(rec.op("dnl_block", "softmax")) == 2
    return {
        "dnl.x": (rec.inp("dnl_block"), "input of the DNL block (convs.0 output), (1, C, h, w)"),
        "dnl.theta": (rec.out("dnl_block.theta"), "theta(x) before whitening, (1, d, h, w)"),
        "dnl.phi": (rec.out("dnl_block.phi"), "phi(x) before whitening, (1, d, h, w)"),
        "dnl.theta_white": (eg["theta"], "theta minus its mean over the N positions, as (1, N, d)"),
        "dnl.phi_white": (eg["phi"], "phi minus its mean over the N positions, as (1, d, N)"),
        "dnl.g": (rec.out("dnl_block.g"), "g(x), the values, (1, d, h, w)"),
        "dnl.attn_pairwise": (eg["out"], "softmax over keys of theta_white.phi_white / sqrt(d) / temperature, (1, N, N)"),
        "dnl.unary_logits": (rec.out("dnl_block.conv_mask"), "conv_mask(x), (1, 1, h, w)"),
        "dnl.unary": (unary[0]["output"], "softmax over N of conv_mask(x), (1, 1, N): one query-independent map"),
        "dnl.out": (rec.out("dnl_block"), "x + conv_out(pairwise @ g + unary @ g), (1, C, h, w)"),
    }


def cap_gc(head, rec):
    (mask,) = rec.op("gc_block.softmax", "softmax")
    return {
        "gc.x": (rec.inp("gc_block"), "input of the context block (convs.0 output), (1, C, h, w)"),
        "gc.mask_logits": (rec.out("gc_block.conv_mask"), "conv_mask(x), (1, 1, h, w)"),
        "gc.mask": (mask["output"], "softmax over N of conv_mask(x), (1, 1, N): the one query-independent map"),
        "gc.channel_add": (rec.out("gc_block.channel_add_conv"), "channel_add_conv(sum_n mask_n x_n), (1, C, 1, 1)"),
        "gc.out": (rec.out("gc_block"), "x + channel_add term, (1, C, h, w)"),
    }


def cap_cc(head, rec):
    attn = rec.op("cca", "softmax")
    assert len(attn) == 2 and len(rec.calls["cca"]) == 2
    out = {}
    for i in range(2):
        out[f"cc.loop{i + 1}.x"] = (rec.inp("cca", i), f"input of criss-cross loop {i + 1}, (1, C, h, w)")
        out[f"cc.loop{i + 1}.attn"] = (attn[i]["output"],
                                       (f"loop {i + 1} weights (1, h, w, h+w): [..., :h] over the query's column "
                                       "(entry i = row i; the query's own cell has logit -inf, weight 0), "
                                       "[..., h:] over its row (entry j = column j); one softmax over all h+w"))
        out[f"cc.loop{i + 1}.out"] = (rec.out("cca", i), f"gamma * (A @ V) + x of loop {i + 1}, (1, C, h, w)")
    return out


def cap_ocr(root, rec):
    (regions,) = rec.op("1.spatial_gather_module", "softmax")
    (pix,) = rec.op("1.object_context_block", "softmax")
    return {
        "ocr.feats": (rec.out("1.bottleneck"), "OCR bottleneck output (the pixel features), (1, C, h, w)"),
        "ocr.regions": (regions["output"], "soft object regions: softmax over N of scale * coarse logits, (1, K, N)"),
        "ocr.context": (rec.out("1.spatial_gather_module"), "region vectors sum_n region_k(n) feats_n, (1, C, K, 1)"),
        "ocr.query": (rec.out("1.object_context_block.query_project"), "query_project(feats), (1, c, h, w)"),
        "ocr.key": (rec.out("1.object_context_block.key_project"), "key_project(context), (1, c, K, 1)"),
        "ocr.pixel_region": (pix["output"], "pixel -> region weights: softmax over K of q.k / sqrt(c), (1, N, K)"),
        "ocr.object_context": (rec.out("1.object_context_block"), "ObjectAttentionBlock output, (1, C, h, w)"),
    }


def cap_ema(head, rec):
    z = rec.op("ema_module", "softmax")
    norms = rec.op("ema_module", "normalize")
    stages = head.num_stages
    assert len(z) == stages and len(norms) == 2 * stages
    out = {"ema.x": (rec.inp("ema_module"), "input of the EM module (ema_mid_conv output), (1, C, h, w)")}
    for s in range(stages):
        assert norms[2 * s]["p"] == 1 and norms[2 * s + 1]["p"] == 2
        out[f"ema.z.{s}"] = (z[s]["output"], f"E-step {s + 1}: responsibilities, softmax over the bases (last axis) of x.mu, (1, N, k)")
        out[f"ema.z_normed.{s}"] = (norms[2 * s]["output"], f"step {s + 1}: z L1-normalised over positions (axis 1), (1, N, k)")
        out[f"ema.bases.{s}"] = (norms[2 * s + 1]["output"], f"M-step {s + 1}: bases L2-normalised over channels (axis 1), (1, C, k)")
    out["ema.recon"] = (rec.out("ema_module"), "bases_last @ z_last^T, the reconstruction (before ReLU), (1, C, h, w)")
    return out


def _psa_shrink(h, w, factor=2):
    """mmseg psa_head's shrink rule: both odd -> (h-1)//f+1 with align_corners=True, else h//f."""
    if h % factor and w % factor:
        return (h - 1) // factor + 1, (w - 1) // factor + 1, True
    return h // factor, w // factor, False


def cap_psa(head, rec):
    sm = rec.op("", "softmax")
    assert len(sm) == 2
    out = {}
    for branch, att, mask_mod, red, i in (("collect", "attention", "psamask_collect", "reduce", 0),
                                          ("distribute", "attention_p", "psamask_distribute", "reduce_p", 1)):
        n, hw = sm[i]["output"].shape[:2]
        out[f"psa.{branch}.reduced"] = (rec.out(red), f"{red}(x) on the full grid, (1, c, h, w)")
        out[f"psa.{branch}.x"] = (rec.inp(att), "the reduced features after the x2 bilinear shrink, (1, c, h', w')")
        out[f"psa.{branch}.hidden"] = (rec.out(f"{att}.0"), f"{att}.0 output, the hidden features, (1, c, h', w')")
        out[f"psa.{branch}.mask"] = (rec.out(att), f"{att} output: mask_h*mask_w channels per cell, (1, mh*mw, h', w')")
        out[f"psa.{branch}.buffer"] = (rec.out(mask_mod), "psamask output, zero outside each window, (1, h'w', h', w')")
        out[f"psa.{branch}.attn"] = (sm[i]["output"].reshape(n, hw, hw),
                                     ("softmax over axis 1 of the buffer, as (1, N', N'); "
                                     "out[:, p] = sum_t x[:, t] attn[t, p]"))
    out["psa.proj_out"] = (rec.out("proj"), "proj(cat[collect, distribute]) (1x1 conv with padding=1), (1, C_in, h'+2, w'+2)")
    return out


def cap_isa(head, rec):
    (glb,) = rec.op("global_relation", "softmax")
    (loc,) = rec.op("local_relation", "softmax")
    return {
        "isa.x": (rec.out("in_conv"), "in_conv output before padding, (1, C, h, w)"),
        "isa.global.x": (rec.inp("global_relation"), "global-relation input: one group per in-block offset, (loc_h*loc_w, C, glb_h, glb_w)"),
        "isa.global_attn": (glb["output"], "long-range (global lattice) softmax over keys, (loc_h*loc_w, G, G), G = glb_h*glb_w"),
        "isa.global.out": (rec.out("global_relation"), "global-relation output (after output_project), (loc_h*loc_w, C, glb_h, glb_w)"),
        "isa.local.x": (rec.inp("local_relation"), "local-relation input: one group per block, (glb_h*glb_w, C, loc_h, loc_w)"),
        "isa.local_attn": (loc["output"], "short-range (within-block) softmax over keys, (glb_h*glb_w, L, L), L = loc_h*loc_w"),
        "isa.local.out": (rec.out("local_relation"), "local-relation output, (glb_h*glb_w, C, loc_h, loc_w)"),
    }


def cap_ann(head, rec):
    (fus,) = rec.op("fusion.stages.0", "softmax")
    (ctx,) = rec.op("context.stages.0", "softmax")
    return {
        "ann.fusion.attn": (fus["output"], "AFNB: softmax over the S pooled layer3 keys of q.k / sqrt(c), (1, N, S)"),
        "ann.fusion.key": (rec.out("fusion.stages.0.key_downsample", 0), "AFNB keys after PPMConcat pooling, (1, c, S)"),
        "ann.fusion.prior": (rec.out("fusion.stages.0"), "AFNB stage output (after out_project), (1, C4, h, w)"),
        "ann.fusion.out": (rec.out("fusion"), "AFNB output (bottleneck of [prior, layer4]), (1, C4, h, w)"),
        "ann.context.x": (rec.inp("context"), "APNB input (the 3x3 bottleneck output), (1, C, h, w)"),
        "ann.context.attn": (ctx["output"], "APNB: softmax over the S pooled keys of q.k / sqrt(c), shared key/query projection, (1, N, S)"),
        "ann.context.prior": (rec.out("context.stages.0"), "APNB stage output, (1, C, h, w)"),
        "ann.context.out": (rec.out("context"), "APNB output, (1, C, h, w)"),
    }


def cap_apc(head, rec):
    out = {}
    for i, s in enumerate(head.pool_scales):
        (aff,) = rec.op(f"acm_modules.{i}", "sigmoid")
        out[f"apc.acm{i}.x"] = (rec.out(f"acm_modules.{i}.input_redu_conv"), f"scale {s}: input_redu_conv(x), (1, c, h, w)")
        out[f"apc.acm{i}.pooled"] = (rec.out(f"acm_modules.{i}.pooled_redu_conv"), f"scale {s}: pooled_redu_conv(avgpool_{s}(x)), (1, c, {s}, {s})")
        out[f"apc.acm{i}.affinity_logits"] = (aff["input"], f"scale {s}: gla(x + global_info(avgpool_1(x))) as (1, N, {s * s})")
        out[f"apc.acm{i}.affinity"] = (aff["output"], f"scale {s}: sigmoid affinities to the {s * s} pooled regions, (1, N, {s * s}); NOT a distribution")
        out[f"apc.acm{i}.out"] = (rec.out(f"acm_modules.{i}"), f"scale {s}: ACM output, (1, c, h, w)")
    return out


def cap_da(head, rec):
    (pam,) = rec.op("pam", "softmax")
    (cam,) = rec.op("cam", "softmax")
    return {
        "da.pam.x": (rec.inp("pam"), "PAM input (pam_in_conv output), (1, C, h, w)"),
        "da.pam.attn": (pam["output"], "PAM: softmax over keys of q.k (no scale), (1, N, N)"),
        "da.pam.out": (rec.out("pam"), "gamma_pam * (attn @ v) + x, (1, C, h, w)"),
        "da.cam.x": (rec.inp("cam"), "CAM input (cam_in_conv output), (1, C, h, w)"),
        "da.cam.energy_new": (cam["input"], "CAM logits: rowmax(E) - E with E = X X^T, (1, C, C)"),
        "da.cam.attn": (cam["output"], "CAM: softmax over the last axis of rowmax(E) - E, (1, C, C)"),
        "da.cam.out": (rec.out("cam"), "gamma_cam * (attn @ X) + x, (1, C, h, w)"),
    }


# name -> cfg: mmseg head config(s) at small widths; capture: what to save; gains: per-module
# weight multipliers that keep each attention neither flat nor one-hot; scales: the gamma values
HEADS = {
    "nl": {"cfg": head_cfg("NLHead", reduction=2, use_scale=True, mode="embedded_gaussian"),
           "capture": cap_nl, "gains": {"nl_block.theta": 2.0, "nl_block.phi": 2.0}},
    "dnl": {"cfg": head_cfg("DNLHead", reduction=2, use_scale=True, mode="embedded_gaussian", temperature=0.05),
            "capture": cap_dnl,
            "gains": {"dnl_block.theta": 0.35, "dnl_block.phi": 0.35, "dnl_block.conv_mask": 2.0}},
    "gc": {"cfg": head_cfg("GCHead", ratio=1 / 4., pooling_type="att", fusion_types=("channel_add",)),
           "capture": cap_gc, "gains": {"gc_block.conv_mask": 2.0}},
    "cc": {"cfg": head_cfg("CCHead", channels=24, recurrence=2), "capture": cap_cc,
           "gains": {"cca.query_conv": 1.5, "cca.key_conv": 1.5}, "scales": {"cca.gamma": 0.7}},
    "ocr": {"cfg": [{"type": "FCNHead", "in_channels": 24, "in_index": 2, "channels": 16, "num_convs": 1,
                     "concat_input": False, "dropout_ratio": 0.1, "num_classes": K, "norm_cfg": BN,
                     "align_corners": False},
                    head_cfg("OCRHead", channels=24, ocr_channels=16)],
            "capture": cap_ocr,
            "gains": {"0.conv_seg": 3.0, "1.object_context_block.query_project": 3.0,
                      "1.object_context_block.key_project": 3.0}},
    "ema": {"cfg": head_cfg("EMAHead", channels=16, ema_channels=24, num_bases=8, num_stages=3, momentum=0.1),
            "capture": cap_ema, "gains": {"ema_mid_conv": 3.0}},
    "psa": {"cfg": head_cfg("PSAHead", channels=16, mask_size=(7, 9), psa_type="bi-direction", compact=False,
                            shrink_factor=2, normalization_factor=1.0, psa_softmax=True),
            "capture": cap_psa, "gains": {"attention.1": 2.0, "attention_p.1": 2.0}},
    "psa_even": {"cfg": head_cfg("PSAHead", channels=16, mask_size=(7, 9), psa_type="bi-direction", compact=False,
                                 shrink_factor=2, normalization_factor=1.0, psa_softmax=True),
                 "capture": cap_psa, "gains": {"attention.1": 2.0, "attention_p.1": 2.0}, "hw": (9, 10)},
    "isa": {"cfg": head_cfg("ISAHead", channels=24, isa_channels=12, down_factor=(4, 2)), "capture": cap_isa,
            "gains": {"global_relation.query_project": 2.0, "global_relation.key_project": 2.0,
                      "local_relation.query_project": 3.0, "local_relation.key_project": 3.0}},
    "ann": {"cfg": head_cfg("ANNHead", in_channels=[24, 40], in_index=[2, 3], channels=24, project_channels=12,
                            query_scales=(1,), key_pool_scales=(1, 3, 6, 8)),
            "capture": cap_ann,
            "gains": {"fusion.stages.0.query_project": 3.0, "fusion.stages.0.key_project": 3.0,
                      "context.stages.0.key_project": 4.0}},
    "apc": {"cfg": head_cfg("APCHead", channels=16, pool_scales=(1, 2, 3, 6), fusion=True), "capture": cap_apc},
    "da": {"cfg": head_cfg("DAHead", channels=24, pam_channels=8), "capture": cap_da,
           "gains": {"pam.query_project": 1.5, "pam.key_project": 1.5},
           "scales": {"pam.gamma": 0.6, "cam.gamma": -0.4}, "cam_input_gain": 0.35},
}

# which captured tensors are distributions, and over which axis (also checked by the test)
DISTRIBUTIONS = {
    "nl": {"nl.attn": -1}, "dnl": {"dnl.attn_pairwise": -1, "dnl.unary": -1}, "gc": {"gc.mask": -1},
    "cc": {"cc.loop1.attn": -1, "cc.loop2.attn": -1},
    "ocr": {"ocr.regions": -1, "ocr.pixel_region": -1},
    "ema": {**{f"ema.z.{s}": -1 for s in range(3)}, **{f"ema.z_normed.{s}": 1 for s in range(3)}},
    "psa": {"psa.collect.attn": 1, "psa.distribute.attn": 1},
    "psa_even": {"psa.collect.attn": 1, "psa.distribute.attn": 1},
    "isa": {"isa.global_attn": -1, "isa.local_attn": -1},
    "ann": {"ann.fusion.attn": -1, "ann.context.attn": -1},
    "apc": {}, "da": {"da.pam.attn": -1, "da.cam.attn": -1},
}


def _json(obj):
    return json.loads(json.dumps(obj, default=list))


def _spread(t: torch.Tensor, axis: int) -> dict:
    """How peaked a distribution tensor is: mean normalised entropy and mean max along axis."""
    t = t.double().movedim(axis, -1).reshape(-1, t.shape[axis])
    ent = -(t * t.clamp_min(1e-300).log()).sum(-1) / math.log(t.shape[-1])
    return {"mean_norm_entropy": round(ent.mean().item(), 4), "mean_max": round(t.max(-1).values.mean().item(), 4)}


def make_fixture(name: str, spec: dict, MODELS, versions: dict, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    cfgs = spec["cfg"]
    cascade = isinstance(cfgs, list)
    torch.manual_seed(SEED)
    root = nn.ModuleList([MODELS.build(dict(c)) for c in cfgs]) if cascade else MODELS.build(dict(cfgs))
    randomize(root, gen, spec.get("gains"), spec.get("scales"))
    root.eval()
    h, w = spec.get("hw", (H, W))
    inputs = make_inputs(gen, h, w)
    if "cam_input_gain" in spec:      # CAM's logits are sums over N of products: keep them moderate
        with torch.no_grad():
            root.cam_in_conv.bn.weight.mul_(spec["cam_input_gain"])
            root.cam_in_conv.bn.bias.mul_(spec["cam_input_gain"])

    def forward():
        if cascade:
            coarse = root[0](inputs)
            return {"logits": root[1](inputs, coarse), "logits_coarse": coarse}
        out = root(inputs)
        if isinstance(out, tuple):          # DAHead: (pam_cam, pam, cam)
            return {"logits": out[0], "logits_pam": out[1], "logits_cam": out[2]}
        return {"logits": out}

    with torch.no_grad():
        plain = forward()
        rec = Recorder(root)
        rec.eg_calls = []
        for block in ("nl_block", "dnl_block"):
            if hasattr(root, block):
                mod = getattr(root, block)
                orig = mod.embedded_gaussian

                def wrapped(theta_x, phi_x, _orig=orig):
                    res = _orig(theta_x, phi_x)
                    rec.eg_calls.append({"theta": theta_x.detach().clone(), "phi": phi_x.detach().clone(),
                                             "out": res.detach().clone()})
                    return res
                mod.embedded_gaussian = wrapped        # found first by getattr(self, self.mode)
        with rec:
            outs = forward()
        for block in ("nl_block", "dnl_block"):
            if hasattr(root, block):
                del getattr(root, block).embedded_gaussian
        for key in plain:
            assert torch.equal(plain[key], outs[key]), f"{name}: recording changed {key}"
        captured = spec["capture"](root, rec)

    tensors, notes = {}, {}
    prefix = "decode_head."
    for key, value in root.state_dict().items():
        tensors[prefix + key] = value.detach().clone().contiguous()
    for i, x in enumerate(inputs):
        tensors[f"inputs.{i}"] = x.contiguous()
        notes[f"inputs.{i}"] = f"backbone stage {i + 1} feature (layer{i + 1}), {tuple(x.shape)}"
    for key, value in outs.items():
        tensors[key] = value.contiguous()
        notes[key] = f"head output {key}, {tuple(value.shape)}"
    for key, (value, note) in captured.items():
        assert isinstance(value, torch.Tensor), f"{name}: {key} not captured"
        tensors[key] = value.contiguous()
        notes[key] = note
    for key, value in tensors.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{name}: {key} not finite"

    dists = DISTRIBUTIONS[name]
    meta = {
        "head": name,
        "config": _json(cfgs),
        "state_dict_prefix": prefix,
        "feature_hw": [h, w],
        "seed": SEED,
        "versions": versions,
        "eval": True,
        "mmcv_ops": "stub: real mmcv/ops/cc_attention.py and point_sample.py; PSAMask = PSAMaskCPUPort "
                    "(literal port of mmcv's CPU psamask kernel)",
        "distributions": dists,
        "spread": {k: _spread(tensors[k], ax) for k, ax in dists.items()},
        "tensors": notes,
    }
    if name.startswith("psa"):
        hs, ws, ac = _psa_shrink(h, w)
        assert tuple(tensors["psa.collect.x"].shape[2:]) == (hs, ws)
        meta["psa"] = {"shrunk_hw": [hs, ws], "align_corners_after_shrink": ac,
                       "note": "mmseg resizes proj's output back with this align_corners, not the head's"}
    if name == "isa":
        lh, lw = cfgs["down_factor"]
        gh, gw = math.ceil(h / lh), math.ceil(w / lw)
        ph, pw = gh * lh - h, gw * lw - w
        meta["isa"] = {"glb_hw": [gh, gw], "loc_hw": [lh, lw], "pad_hw": [ph, pw],
                       "padding_lrtb": [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"oracle": json.dumps(meta)})
    size = path.stat().st_size
    assert size < MAX_FILE, f"{path.name} is {size} bytes"
    print(f"{path.name}: {size / 1000:.0f} kB, {len(tensors)} tensors, spread {meta['spread']}")
    return path


# ---- key/shape listings at the published widths ------------------------------------------------

KEY_CONFIGS = {
    # head -> config file inside mmseg/.mim/configs (the r50-d8 Cityscapes 512x1024 40k/80k ones)
    "nl": "nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "cc": "ccnet/ccnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "dnl": "dnlnet/dnl_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "gc": "gcnet/gcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ocr_r101": "ocrnet/ocrnet_r101-d8_4xb2-40k_cityscapes-512x1024.py",
    "ocr_hr18": "ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py",
    "ocr_hr48": "ocrnet/ocrnet_hr48_4xb2-40k_cityscapes-512x1024.py",
    "ema": "emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py",
    "psa": "psanet/psanet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "isa": "isanet/isanet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ann": "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "apc": "apcnet/apcnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "da": "danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
}


def _no_syncbn(obj):
    if isinstance(obj, dict):
        return {k: ("BN" if k == "type" and v == "SyncBN" else _no_syncbn(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_syncbn(v) for v in obj]
    return obj


def make_key_listings(MODELS, versions: dict, out_dir: Path):
    import mmseg
    from mmengine.config import Config

    cfg_root = Path(mmseg.__file__).parent / ".mim" / "configs"
    out_dir.mkdir(parents=True, exist_ok=True)
    backbones = {}
    for name, rel in KEY_CONFIGS.items():
        cfg = Config.fromfile(str(cfg_root / rel))
        model_cfg = _no_syncbn(cfg.model.to_dict())
        model_cfg.pop("pretrained", None)
        model_cfg.pop("data_preprocessor", None)
        with torch.device("meta"):
            model = MODELS.build(model_cfg)
        sd = model.state_dict()
        shapes = {k: list(v.shape) for k, v in sd.items()}
        bb = {k: s for k, s in shapes.items() if k.startswith("backbone.")}
        heads = {k: s for k, s in shapes.items() if not k.startswith("backbone.")}
        decode = model_cfg["decode_head"]
        listing = {
            "config": f"mmseg/.mim/configs/{rel}",
            "versions": versions,
            "note": "built with MODELS.build(cfg.model), SyncBN swapped for BN (same key names); "
                    "keys and shapes of the state dict a checkpoint's 'state_dict' holds",
            "decode_head_config": _json(decode),
            "auxiliary_head_config": _json(model_cfg.get("auxiliary_head")),
            "test_cfg": _json(model_cfg.get("test_cfg")),
            "keys": heads,
        }
        bb_type = model_cfg["backbone"]["type"]
        depth = model_cfg["backbone"].get("depth")
        bb_name = {("ResNetV1c", 50): "resnetv1c50", ("ResNetV1c", 101): "resnetv1c101"}.get((bb_type, depth))
        if bb_name:
            listing["backbone_keys_file"] = f"{bb_name}_keys.json"
            backbones.setdefault(bb_name, (rel, model_cfg["backbone"], bb))
        else:
            listing["backbone_config"] = _json(model_cfg["backbone"])
            listing["backbone_keys"] = bb
        path = out_dir / f"{name}_cityscapes_keys.json"
        path.write_text(_dump_json(listing))
        print(f"{path.name}: {len(heads)} head keys, {len(bb)} backbone keys")
    for bb_name, (rel, bb_cfg, bb) in backbones.items():
        path = out_dir / f"{bb_name}_keys.json"
        path.write_text(_dump_json({"config": f"mmseg/.mim/configs/{rel}", "versions": versions,
                                    "backbone_config": _json(bb_cfg), "keys": bb}))
        print(f"{path.name}: {len(bb)} keys")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heads", nargs="*", help=f"some of {', '.join(HEADS)} (default: all)")
    parser.add_argument("--keys", action="store_true", help="only the key/shape listings")
    parser.add_argument("--no-keys", action="store_true", help="skip the key/shape listings")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    check_psamask_port()
    MODELS, versions = import_mmseg()
    if not args.keys:
        for name in args.heads or HEADS:
            make_fixture(name, HEADS[name], MODELS, versions, args.out)
    if not args.no_keys and not args.heads:
        make_key_listings(MODELS, versions, args.out)


if __name__ == "__main__":
    main()
