"""Export tiny versions of the real architectures the 2026-11-29 coverage sweep found wrong
(needs torch, timm, transformers). Random weights, tiny configs, nothing downloaded.

    python tests/exported/make_sweep_models.py [outdir]

- timm_nfnet_tiny.onnx: timm's NormFreeNet (NFNet-L0's layout: standardized convolutions,
  squeeze-excitation, SiLU), 2 stages of 16/32 channels, 32x32 input. The last standardized
  conv of each residual branch starts with gain 0, so its effective weight, which the graph
  computes, is all zero: read as ones under `zero_init="ones"`, the SE layers score.
- timm_mvitv2_tiny.onnx: timm's MViTv2 (relative-position tables gathered by constant
  indices into Einsums), depths (1, 1), width 16, 32x32 input: the gathered tables are
  fixed factors.
- hf_mamba_tiny.onnx: transformers' Mamba (the selective scan unrolled over 8 tokens, its
  state starting from zeros), 2 layers, width 32, 8 tokens: a join of flows far beyond
  float32 (273 nats), reported; float32 loses 2,367 of its weights' scores there.

The files are committed for tests/test_sweep_models.py, which needs no torch.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import onnx
import torch

HERE = Path(__file__).resolve().parent


def _export(module: torch.nn.Module, args: tuple, path: Path, names_in: list[str]) -> None:
    torch.onnx.export(
        module.eval(),
        args,
        path,
        dynamo=False,
        opset_version=17,
        input_names=names_in,
        output_names=["logits"],
        do_constant_folding=True,
    )
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False, return_dict=True).logits


def main(out: Path) -> None:
    import timm
    import transformers
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
    from timm.models.nfnet import NfCfg, NormFreeNet

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cfg = NfCfg(
        depths=(1, 1, 1, 1), channels=(16, 32, 32, 32), stem_chs=8, group_size=8,
        attn_layer="se", attn_kwargs={"rd_ratio": 0.5}, num_features=64,
    )  # fmt: skip
    nfnet = NormFreeNet(cfg, num_classes=10)
    _export(nfnet, (torch.randn(1, 3, 32, 32),), out / "timm_nfnet_tiny.onnx", ["input"])

    torch.manual_seed(0)
    mcfg = MultiScaleVitCfg(depths=(1, 1), embed_dim=16, num_heads=1)
    mvit = MultiScaleVit(mcfg, img_size=(32, 32), num_classes=10)
    _export(mvit, (torch.randn(1, 3, 32, 32),), out / "timm_mvitv2_tiny.onnx", ["input"])

    torch.manual_seed(0)
    mcfg2 = transformers.MambaConfig(
        hidden_size=32, num_hidden_layers=2, vocab_size=256, state_size=4
    )
    mamba = _Logits(transformers.MambaForCausalLM(mcfg2))
    ids = torch.randint(0, 256, (1, 8), dtype=torch.int64)
    _export(mamba, (ids,), out / "hf_mamba_tiny.onnx", ["input_ids"])
    del timm


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
