"""Export small real architectures whose flow starts inside the graph (needs torch,
transformers; onnxscript for dynamo). Random weights, tiny configs, nothing downloaded.

    python tests/exported/make_sources_models.py [outdir]

- hf_vit.onnx: transformers ViT (class token concatenated, head reads token 0), TorchScript;
- hf_deit_dynamo.onnx: transformers DeiT with teacher (class and distillation tokens, both
  zero-initialized; two heads), dynamo;
- gpt2_torchscript.onnx, gpt2_dynamo.onnx: transformers GPT-2 (wte tied to lm_head, which
  both exporters store a second time, transposed; causal and padding masks computed from
  the attention_mask input);
- llama_dynamo.onnx: transformers LLaMA (rotary tables and causal mask computed from the
  positions and the attention mask), dynamo;
- clip_text.onnx: transformers CLIP text model (pooling at the argmax of the ids).

The files are committed for tests/test_sources.py, which needs no torch.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import onnx
import torch

HERE = Path(__file__).resolve().parent


def _save(path: Path) -> None:
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 10)
    onnx.save(model, path)
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def _export(module, args, path: Path, names_in, names_out, dynamo: bool) -> None:
    kw = {"external_data": False} if dynamo else {"do_constant_folding": True}
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=dynamo,
        opset_version=18 if dynamo else 17,
        input_names=names_in,
        output_names=names_out,
        **kw,
    )
    _save(path)


class _Logits(torch.nn.Module):
    """A transformers model returning its first output as one tensor."""

    def __init__(self, model, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x, attention_mask=None):
        if attention_mask is None:
            return getattr(self.model(x), self.key)
        return getattr(self.model(x, attention_mask=attention_mask, use_cache=False), self.key)


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    pixels = torch.ones(1, 3, 16, 16)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    vit = ViTForImageClassification(
        ViTConfig(image_size=16, patch_size=8, num_labels=3, **small)
    ).eval()
    _export(_Logits(vit, "logits"), (pixels,), out / "hf_vit.onnx", ["pixel_values"],
            ["logits"], dynamo=False)  # fmt: skip
    deit = DeiTForImageClassificationWithTeacher(  # class and distillation tokens, zero init
        DeiTConfig(image_size=16, patch_size=8, num_labels=3, **small)
    ).eval()
    _export(_Logits(deit, "logits"), (pixels,), out / "hf_deit_dynamo.onnx", ["pixel_values"],
            ["logits"], dynamo=True)  # fmt: skip

    ids = torch.randint(0, 40, (1, 6))
    mask = torch.ones(1, 6, dtype=torch.long)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                   bos_token_id=1, eos_token_id=2)
    ).eval()  # fmt: skip
    for dynamo in (False, True):
        name = "gpt2_dynamo.onnx" if dynamo else "gpt2_torchscript.onnx"
        _export(_Logits(gpt2, "logits"), (ids, mask), out / name,
                ["input_ids", "attention_mask"], ["logits"], dynamo=dynamo)  # fmt: skip

    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                    bos_token_id=1, eos_token_id=2)
    ).eval()  # fmt: skip
    _export(_Logits(llama, "logits"), (ids, mask), out / "llama_dynamo.onnx",
            ["input_ids", "attention_mask"], ["logits"], dynamo=True)  # fmt: skip

    clip = CLIPTextModel(
        CLIPTextConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=8, bos_token_id=1,
                       eos_token_id=2)
    ).eval()  # fmt: skip
    _export(_Logits(clip, "pooler_output"), (ids,), out / "clip_text.onnx", ["input_ids"],
            ["pooled"], dynamo=False)  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
