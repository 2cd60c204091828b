"""Coverage benchmark: prune every torchvision model and a set of small transformers.

Each model is built with random weights (nothing is downloaded: `weights=None`,
`weights_backbone=None`, transformers from small configs, never `from_pretrained`), exported
with PyTorch's TorchScript exporter (`dynamo=False`, opset 17) and/or its dynamo exporter
(`dynamo=True`, opset 18), saved with IR version <= 10, and pruned by this checkout's onnxflow
CLI (sparsity 0.9, 3 iterations, `--scores`). Every export and every prune runs in its own
subprocess with a timeout, so one crash or hang does not stop the run. Recorded per model:
pruned or the exact error line, times, nonzero weights whose score is 0 (and how those zeros
are laid out, a hint at why), and whether the pruned model runs in onnxruntime with the
original's output shapes.

    PYTHONPATH=$PWD python benchmarks/zoo.py [--family F] [--exporter E] [--only REGEX]

needs torch, torchvision, transformers and onnxscript (the test suite does not import this
file). Results are merged into `--json` (one entry per model and exporter, so subsets can be
rerun) and `--md` is rewritten from all entries.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPARSITY = 0.9
ITERATIONS = 3

# --------------------------------------------------------------------------------------------
# The model list (names only: nothing here imports torch)

CLASSIFICATION = [
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf",
    "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152", "resnet18",
    "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s",
    "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32",
    "wide_resnet101_2", "wide_resnet50_2",
]  # fmt: skip
SEGMENTATION = [
    "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet101", "deeplabv3_resnet50",
    "fcn_resnet101", "fcn_resnet50", "lraspp_mobilenet_v3_large",
]  # fmt: skip
DETECTION = [
    "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fcos_resnet50_fpn",
    "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]  # fmt: skip
# transformers architectures built from small configs (see _transformer below)
TRANSFORMERS = [
    "hf_gpt2", "hf_llama", "hf_mistral", "hf_qwen2", "hf_phi", "hf_bert", "hf_distilbert",
    "hf_roberta", "hf_t5", "hf_bart", "hf_vit", "hf_deit", "hf_swin", "hf_clip",
    "hf_whisper", "hf_wav2vec2",
]  # fmt: skip
# More transformers (a later sweep): decoders, encoders and vision models of other families.
TRANSFORMERS_MORE = [
    "hf_albert", "hf_electra", "hf_deberta_v2", "hf_mpnet", "hf_mobilebert", "hf_gpt_neox",
    "hf_opt", "hf_bloom", "hf_falcon", "hf_gemma", "hf_gemma2", "hf_gptj", "hf_starcoder2",
    "hf_granite", "hf_mamba", "hf_hubert", "hf_convnext", "hf_convnextv2", "hf_segformer",
    "hf_mobilevit", "hf_dinov2", "hf_beit", "hf_poolformer", "hf_resnet", "hf_regnet",
    "hf_swinv2", "hf_marian", "hf_pegasus", "hf_mbart", "hf_funnel", "hf_squeezebert",
    "hf_longformer", "hf_mixtral", "hf_qwen2_moe", "hf_phi3", "hf_olmo", "hf_cohere",
    "hf_levit", "hf_efficientnet", "hf_mobilenet_v2", "hf_data2vec_vision", "hf_yolos",
    "hf_dpt", "hf_focalnet", "hf_bit", "hf_pvt", "hf_wav2vec2_conformer", "hf_ast",
]  # fmt: skip
# timm models (num_classes=100; input 64x64 where the model takes it, else 224 or 256).
TIMM = [
    "timm_resnest14d", "timm_res2net50_14w_8s", "timm_skresnet18", "timm_dpn48b",
    "timm_xception41", "timm_inception_v4", "timm_hrnet_w18_small", "timm_ghostnet_100",
    "timm_ghostnetv2_100", "timm_mobileone_s0", "timm_repvit_m1", "timm_fastvit_t8",
    "timm_efficientformer_l1", "timm_efficientformerv2_s0", "timm_edgenext_xx_small",
    "timm_mobilevitv2_050", "timm_crossvit_tiny_240", "timm_xcit_nano_12_p16_224",
    "timm_pvt_v2_b0", "timm_poolformer_s12", "timm_gcvit_xxtiny", "timm_regnetz_b16",
    "timm_selecsls42b", "timm_mixnet_s", "timm_lcnet_050", "timm_rexnet_100",
    "timm_cspresnet50", "timm_dla34", "timm_hgnetv2_b0", "timm_eva02_tiny_patch14_224",
    "timm_deit3_small_patch16_224", "timm_vit_relpos_small_patch16_224", "timm_sequencer2d_s",
    "timm_mvitv2_tiny", "timm_hiera_tiny_224", "timm_caformer_s18", "timm_inception_next_tiny",
    "timm_efficientvit_b0", "timm_efficientvit_m0", "timm_tiny_vit_5m_224", "timm_halonet26t",
    "timm_botnet26t_256", "timm_lambda_resnet26t", "timm_mambaout_femto", "timm_starnet_s1",
    "timm_nfnet_l0", "timm_ese_vovnet19b_dw", "timm_tresnet_m", "timm_resnetv2_50x1_bit",
    "timm_coatnet_nano_rw_224", "timm_davit_tiny", "timm_twins_svt_small", "timm_convit_tiny",
    "timm_visformer_tiny", "timm_gmixer_12_224", "timm_coat_tiny", "timm_volo_d1_224",
]  # fmt: skip

# Over ~140M parameters: each costs GBs of memory and many minutes on the shared 2-core
# machine, so they run only with --big.
GIANTS = {
    "vit_h_14": "632M parameters",
    "vit_l_16": "304M parameters",
    "vit_l_32": "306M parameters",
    "regnet_y_128gf": "645M parameters (TorchScript export > 2 GB)",
    "regnet_y_32gf": "145M parameters",
    "regnet_x_32gf": "108M parameters, 32 GFLOPs at 224",
    "convnext_large": "198M parameters",
}
# Slow to export or prune on a small machine (regular expressions on names); run last.
HEAVY = [
    r"vgg", r"efficientnet_(b[5-7]|v2_[ml])", r"regnet_[xy]_16gf", r"wide_resnet",
    r"resnext101", r"swin_(v2_)?[bs]$", r"convnext_(base|small)", r"densenet(161|201)",
    r"resnet152", r"maxvit", r"deeplabv3_resnet101", r"fcn_resnet101",
]  # fmt: skip
# Input sizes other than the family's default (height = width).
# AlexNet and VGG pool adaptively to 6x6 / 7x7, which only an input of 224 makes an identity
# (a smaller one fails TorchScript's export and gives dynamo's GatherND). Inception needs >= 75.
INPUT_SIZE = {"inception_v3": 96, "maxvit_t": 224, "alexnet": 224}
INPUT_SIZE.update({n: 224 for n in CLASSIFICATION if n.startswith("vgg")})
FAMILY_SIZE = {"classification": 64, "segmentation": 128, "detection": 128}


def family_of(name: str) -> str:
    """The family a model name belongs to."""
    if name in SEGMENTATION:
        return "segmentation"
    if name in DETECTION:
        return "detection"
    if name in TRANSFORMERS or name in TRANSFORMERS_MORE:
        return "transformers"
    if name in TIMM:
        return "timm"
    return "classification"


# --------------------------------------------------------------------------------------------
# Export worker (imports torch; runs in a subprocess)


def _transformer(name: str) -> tuple[Any, tuple[Any, ...], list[str]]:
    """A small-config transformers model, its example inputs and their names."""
    import torch
    import transformers as tf

    ids = torch.randint(0, 100, (1, 8), dtype=torch.int64)
    mask = torch.ones(1, 8, dtype=torch.int64)
    causal = (ids, mask), ["input_ids", "attention_mask"]
    pixels = torch.randn(1, 3, 32, 32)
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    lm = {**small, "intermediate_size": 128, "vocab_size": 1000}
    if name == "hf_gpt2":
        cfg: Any = tf.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64)
        return tf.GPT2LMHeadModel(cfg), *causal
    if name == "hf_llama":
        cfg = tf.LlamaConfig(**lm, num_key_value_heads=1, max_position_embeddings=64)
        return tf.LlamaForCausalLM(cfg), *causal
    if name == "hf_mistral":
        cfg = tf.MistralConfig(**lm, num_key_value_heads=1, max_position_embeddings=64)
        return tf.MistralForCausalLM(cfg), *causal
    if name == "hf_qwen2":
        cfg = tf.Qwen2Config(**lm, num_key_value_heads=1, max_position_embeddings=64)
        return tf.Qwen2ForCausalLM(cfg), *causal
    if name == "hf_phi":
        cfg = tf.PhiConfig(**lm, max_position_embeddings=64)
        return tf.PhiForCausalLM(cfg), *causal
    if name == "hf_bert":
        cfg = tf.BertConfig(**lm, max_position_embeddings=64)
        return tf.BertForSequenceClassification(cfg), (ids,), ["input_ids"]
    if name == "hf_roberta":
        cfg = tf.RobertaConfig(**lm, max_position_embeddings=64)
        return tf.RobertaForSequenceClassification(cfg), (ids,), ["input_ids"]
    if name == "hf_distilbert":
        cfg = tf.DistilBertConfig(
            dim=64, n_layers=2, n_heads=2, hidden_dim=128, vocab_size=1000,
            max_position_embeddings=64,
        )  # fmt: skip
        return tf.DistilBertForSequenceClassification(cfg), (ids,), ["input_ids"]
    if name == "hf_t5":
        cfg = tf.T5Config(
            d_model=64, d_ff=128, d_kv=32, num_layers=2, num_decoder_layers=2, num_heads=2,
            vocab_size=1000, decoder_start_token_id=0,
        )  # fmt: skip
        return tf.T5ForConditionalGeneration(cfg), (ids, ids), ["input_ids", "decoder_input_ids"]
    if name == "hf_bart":
        cfg = tf.BartConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
            vocab_size=1000, max_position_embeddings=64,
        )  # fmt: skip
        model = tf.BartForConditionalGeneration(cfg)
        return model, (ids, ids), ["input_ids", "decoder_input_ids"]
    vis = {**small, "intermediate_size": 128, "image_size": 32, "patch_size": 8}
    if name == "hf_vit":
        return tf.ViTForImageClassification(tf.ViTConfig(**vis)), (pixels,), ["pixel_values"]
    if name == "hf_deit":
        model = tf.DeiTForImageClassification(tf.DeiTConfig(**vis))
        return model, (pixels,), ["pixel_values"]
    if name == "hf_swin":
        cfg = tf.SwinConfig(
            image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4,
        )  # fmt: skip
        return tf.SwinForImageClassification(cfg), (pixels,), ["pixel_values"]
    if name == "hf_clip":
        cfg = tf.CLIPConfig(
            text_config={**lm, "max_position_embeddings": 16},
            vision_config={**vis},
            projection_dim=32,
        )
        return tf.CLIPModel(cfg), (ids, pixels), ["input_ids", "pixel_values"]
    if name == "hf_whisper":
        cfg = tf.WhisperConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
            vocab_size=1000, num_mel_bins=16, max_source_positions=32,
            max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1,
        )  # fmt: skip
        feats = torch.randn(1, 16, 64)
        model = tf.WhisperForConditionalGeneration(cfg)
        # with its mask, as without one the decoder's mask uses aten::diff (no TorchScript op)
        dec = (ids[:, :4], mask[:, :4])
        names = ["input_features", "decoder_input_ids", "decoder_attention_mask"]
        return model, (feats, *dec), names
    if name == "hf_wav2vec2":
        cfg = tf.Wav2Vec2Config(
            **{**lm, "vocab_size": 32}, conv_dim=(32, 32), conv_kernel=(10, 3),
            conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        )  # fmt: skip
        return tf.Wav2Vec2ForCTC(cfg), (torch.randn(1, 1600),), ["input_values"]
    more = _transformer_more(name, tf, lm, vis)
    if more is not None:
        return more
    raise ValueError(f"unknown transformer {name}")


_CAUSAL_MORE = {
    "hf_gpt_neox", "hf_opt", "hf_bloom", "hf_falcon", "hf_gemma", "hf_gemma2", "hf_gptj",
    "hf_starcoder2", "hf_granite", "hf_mamba",
}  # fmt: skip
_CAUSAL_MORE |= {"hf_mixtral", "hf_qwen2_moe", "hf_phi3", "hf_olmo", "hf_cohere"}
_TEXT_MORE = {
    "hf_albert", "hf_electra", "hf_deberta_v2", "hf_mpnet", "hf_mobilebert", "hf_funnel",
    "hf_squeezebert", "hf_longformer",
}  # fmt: skip
_SEQ2SEQ_MORE = {"hf_marian", "hf_pegasus", "hf_mbart"}


def _transformer_more(
    name: str, tf: Any, lm: dict[str, Any], vis: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], list[str]] | None:
    """A model of TRANSFORMERS_MORE, its example inputs and their names (None: not one)."""
    import torch

    ids = torch.randint(0, 100, (1, 8), dtype=torch.int64)
    inputs: tuple[tuple[Any, ...], list[str]] = ((torch.randn(1, 3, 32, 32),), ["pixel_values"])
    if name in _CAUSAL_MORE:
        inputs = (ids, torch.ones(1, 8, dtype=torch.int64)), ["input_ids", "attention_mask"]
    elif name in _TEXT_MORE:
        inputs = (ids,), ["input_ids"]
    elif name == "hf_hubert":
        inputs = (torch.randn(1, 1600),), ["input_values"]
    elif name == "hf_mobilevit":
        inputs = (torch.randn(1, 3, 64, 64),), ["pixel_values"]
    elif name in _SEQ2SEQ_MORE:
        inputs = (ids, ids), ["input_ids", "decoder_input_ids"]
    elif name in ("hf_wav2vec2_conformer",):
        inputs = (torch.randn(1, 1600),), ["input_values"]
    elif name == "hf_ast":
        inputs = (torch.randn(1, 64, 16),), ["input_values"]
    elif name in (
        "hf_levit",
        "hf_efficientnet",
        "hf_mobilenet_v2",
        "hf_focalnet",
        "hf_bit",
        "hf_pvt",
        "hf_dpt",
    ):
        inputs = (torch.randn(1, 3, 64, 64),), ["pixel_values"]
    dec = {**lm, "max_position_embeddings": 64}
    s2s = {
        "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
        "vocab_size": 1000, "max_position_embeddings": 64,
    }  # fmt: skip
    four = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}
    builders: dict[str, Any] = {
        "hf_albert": lambda: tf.AlbertForSequenceClassification(
            tf.AlbertConfig(**lm, embedding_size=32, max_position_embeddings=64)),
        "hf_electra": lambda: tf.ElectraForSequenceClassification(
            tf.ElectraConfig(**lm, embedding_size=32, max_position_embeddings=64)),
        "hf_deberta_v2": lambda: tf.DebertaV2ForSequenceClassification(
            tf.DebertaV2Config(**lm, max_position_embeddings=64)),
        "hf_mpnet": lambda: tf.MPNetForSequenceClassification(
            tf.MPNetConfig(**lm, max_position_embeddings=64)),
        "hf_mobilebert": lambda: tf.MobileBertForSequenceClassification(tf.MobileBertConfig(
            **lm, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
            max_position_embeddings=64)),
        "hf_gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**dec)),
        "hf_opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
            vocab_size=1000, max_position_embeddings=64, word_embed_proj_dim=64)),
        "hf_bloom": lambda: tf.BloomForCausalLM(
            tf.BloomConfig(hidden_size=64, n_layer=2, n_head=2, vocab_size=1000)),
        "hf_falcon": lambda: tf.FalconForCausalLM(tf.FalconConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=1000)),
        "hf_gemma": lambda: tf.GemmaForCausalLM(
            tf.GemmaConfig(**dec, num_key_value_heads=1, head_dim=32)),
        "hf_gemma2": lambda: tf.Gemma2ForCausalLM(
            tf.Gemma2Config(**dec, num_key_value_heads=1, head_dim=32)),
        "hf_gptj": lambda: tf.GPTJForCausalLM(tf.GPTJConfig(
            n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=64, rotary_dim=16)),
        "hf_starcoder2": lambda: tf.Starcoder2ForCausalLM(
            tf.Starcoder2Config(**dec, num_key_value_heads=1)),
        "hf_granite": lambda: tf.GraniteForCausalLM(
            tf.GraniteConfig(**dec, num_key_value_heads=1)),
        "hf_mamba": lambda: tf.MambaForCausalLM(tf.MambaConfig(
            hidden_size=64, num_hidden_layers=2, vocab_size=1000, state_size=8)),
        "hf_hubert": lambda: tf.HubertForCTC(tf.HubertConfig(
            **{**lm, "vocab_size": 32}, conv_dim=(32, 32), conv_kernel=(10, 3),
            conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)),
        "hf_convnext": lambda: tf.ConvNextForImageClassification(
            tf.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)),
        "hf_convnextv2": lambda: tf.ConvNextV2ForImageClassification(
            tf.ConvNextV2Config(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)),
        "hf_segformer": lambda: tf.SegformerForSemanticSegmentation(tf.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
            num_attention_heads=[1, 2], decoder_hidden_size=32, patch_sizes=[7, 3],
            strides=[4, 2], mlp_ratios=[2, 2])),
        "hf_mobilevit": lambda: tf.MobileViTForImageClassification(
            tf.MobileViTConfig(image_size=64)),
        "hf_dinov2": lambda: tf.Dinov2ForImageClassification(tf.Dinov2Config(**vis)),
        "hf_beit": lambda: tf.BeitForImageClassification(
            tf.BeitConfig(**vis, use_relative_position_bias=True)),
        "hf_poolformer": lambda: tf.PoolFormerForImageClassification(
            tf.PoolFormerConfig(**four)),
        "hf_resnet": lambda: tf.ResNetForImageClassification(
            tf.ResNetConfig(embedding_size=16, **four)),
        "hf_regnet": lambda: tf.RegNetForImageClassification(
            tf.RegNetConfig(embedding_size=16, **four, groups_width=8)),
        "hf_marian": lambda: tf.MarianMTModel(tf.MarianConfig(**s2s, pad_token_id=0,
            decoder_start_token_id=0)),
        "hf_pegasus": lambda: tf.PegasusForConditionalGeneration(tf.PegasusConfig(**s2s)),
        "hf_mbart": lambda: tf.MBartForConditionalGeneration(tf.MBartConfig(**s2s)),
        "hf_funnel": lambda: tf.FunnelForSequenceClassification(tf.FunnelConfig(
            vocab_size=1000, block_sizes=[1, 1], num_decoder_layers=1, d_model=64, n_head=2,
            d_head=32, d_inner=128)),
        "hf_squeezebert": lambda: tf.SqueezeBertForSequenceClassification(
            tf.SqueezeBertConfig(**lm, embedding_size=64, max_position_embeddings=64)),
        "hf_longformer": lambda: tf.LongformerForSequenceClassification(tf.LongformerConfig(
            **lm, attention_window=4, max_position_embeddings=64)),
        "hf_mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(
            **dec, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)),
        "hf_qwen2_moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
            **dec, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=32)),
        "hf_phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**dec, num_key_value_heads=1,
            pad_token_id=0)),
        "hf_olmo": lambda: tf.OlmoForCausalLM(tf.OlmoConfig(**dec, num_key_value_heads=1)),
        "hf_cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**dec,
            num_key_value_heads=1)),
        "hf_levit": lambda: tf.LevitForImageClassification(tf.LevitConfig(image_size=64)),
        "hf_efficientnet": lambda: tf.EfficientNetForImageClassification(
            tf.EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.25,
                                  hidden_dim=320)),
        "hf_mobilenet_v2": lambda: tf.MobileNetV2ForImageClassification(
            tf.MobileNetV2Config(image_size=64, depth_multiplier=0.35)),
        "hf_data2vec_vision": lambda: tf.Data2VecVisionForImageClassification(
            tf.Data2VecVisionConfig(**vis, use_relative_position_bias=True)),
        "hf_yolos": lambda: tf.YolosForObjectDetection(tf.YolosConfig(
            **{**vis, "image_size": [32, 32]}, num_detection_tokens=4)),
        "hf_dpt": lambda: tf.DPTForDepthEstimation(tf.DPTConfig(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
            image_size=64, patch_size=16, neck_hidden_sizes=[16, 32, 48, 64],
            fusion_hidden_size=32, backbone_out_indices=[0, 1, 2, 3])),
        "hf_focalnet": lambda: tf.FocalNetForImageClassification(tf.FocalNetConfig(
            image_size=64, embed_dim=16, depths=[1, 1], focal_levels=[2, 2],
            focal_windows=[3, 3])),
        "hf_bit": lambda: tf.BitForImageClassification(tf.BitConfig(
            embedding_size=32, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1],
            num_groups=8)),
        "hf_pvt": lambda: tf.PvtForImageClassification(tf.PvtConfig(
            image_size=64, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
            num_attention_heads=[1, 2, 2, 4])),
        "hf_wav2vec2_conformer": lambda: tf.Wav2Vec2ConformerForCTC(tf.Wav2Vec2ConformerConfig(
            **{**lm, "vocab_size": 32}, conv_dim=(32, 32), conv_kernel=(10, 3),
            conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            conv_depthwise_kernel_size=3)),
        "hf_ast": lambda: tf.ASTForAudioClassification(tf.ASTConfig(
            **lm, num_mel_bins=16, max_length=64, frequency_stride=4, time_stride=4,
            patch_size=8)),
        "hf_swinv2": lambda: tf.Swinv2ForImageClassification(tf.Swinv2Config(
            image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4)),
    }  # fmt: skip
    make = builders.get(name)
    return None if make is None else (make(), *inputs)


def _timm(name: str) -> tuple[Any, tuple[Any, ...], list[str]]:
    """A timm model with random weights and an input it runs on: 64x64 where it takes it
    (asked for with `img_size` where the model has one), else 224, else 256."""
    import timm
    import torch

    base = name.removeprefix("timm_")
    error: Exception | None = None
    for size in (64, 224, 256):
        try:
            try:
                model = timm.create_model(base, pretrained=False, num_classes=100, img_size=size)
            except TypeError:
                model = timm.create_model(base, pretrained=False, num_classes=100)
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                model.eval()(x)
            return model, (x,), ["input"]
        except Exception as e:  # noqa: BLE001 - try the next size
            error = e
    assert error is not None
    raise error


def _build(name: str) -> tuple[Any, tuple[Any, ...], list[str]]:
    """The eval-mode model with random weights, its example inputs and their names."""
    import torch
    from torchvision import models

    torch.manual_seed(0)
    family = family_of(name)
    if family == "transformers":
        model, args, names = _transformer(name)

        class Logits(torch.nn.Module):
            """Returns the model's logits as a tuple (no cache, no dict)."""

            def __init__(self, inner: Any, decoder: bool) -> None:
                super().__init__()
                self.inner = inner
                self.decoder = decoder

            def forward(self, *xs: Any) -> Any:
                kw: dict[str, Any] = dict(zip(names, xs, strict=True))
                if self.decoder:
                    kw["use_cache"] = False
                out = self.inner(**kw, return_dict=True)
                keys = (
                    "logits",
                    "logits_per_image",
                    "logits_per_text",
                    "pred_boxes",
                    "predicted_depth",
                )
                return tuple(out[k] for k in keys if k in out)

        decoders = ("gpt2", "llama", "mistral", "qwen2", "phi", "t5", "bart", "whisper")
        decoder = name.removeprefix("hf_") in decoders or name in _CAUSAL_MORE | _SEQ2SEQ_MORE
        wrapped = Logits(model, decoder)
        return wrapped.eval(), args, names
    if family == "timm":
        return _timm(name)
    size = INPUT_SIZE.get(name, FAMILY_SIZE[family])
    x = torch.randn(1, 3, size, size)
    if family == "classification":
        kw: dict[str, Any] = {"weights": None}
        if name.startswith("vit_"):
            kw["image_size"] = size
        if name in ("googlenet", "inception_v3"):
            kw["aux_logits"] = False
            kw["init_weights"] = True
        return models.get_model(name, **kw).eval(), (x,), ["input"]
    if family == "segmentation":
        model = models.get_model(name, weights=None, weights_backbone=None)

        class Seg(torch.nn.Module):
            """Returns the dict's tensors as a tuple."""

            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                return tuple(self.inner(x).values())

        return Seg(model).eval(), (x,), ["input"]
    kw = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):
        kw.update(min_size=size, max_size=size)
    model = models.get_model(name, **kw).eval()

    class Det(torch.nn.Module):
        """Takes a batch tensor, returns the first image's detections as a tuple."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return tuple(self.inner(list(x))[0].values())

    return Det(model).eval(), (x,), ["input"]


def _describe(e: BaseException) -> str:
    """One line: the exception's first line and that of its root cause (ANSI colours off)."""

    def first(x: BaseException) -> str:
        lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(x)).splitlines() if ln.strip()]
        return f"{type(x).__name__}: {lines[0].strip() if lines else ''}"

    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = first(e) if root is e else f"{first(e)} <- {first(root)}"
    return text[:400]


def export_worker(name: str, work: str, exporters: str) -> None:
    """Build `name` once and export it with each exporter to `work/<name>.<exporter>/`.

    Each export writes `export.json` beside `model.onnx` (IR <= 10): its time and parameter
    count, or the exporter's error line, so that a hang in the second exporter keeps the
    first one's result.
    """
    import warnings

    import onnx
    import torch

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    model, args, names = _build(name)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model(*args)  # the model runs before it is exported
    build_s = round(time.perf_counter() - t0, 1)
    for exporter in exporters.split(","):
        folder = Path(work) / f"{name}.{exporter}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        tmp = folder / "tmp.onnx"
        meta: dict[str, Any] = {"params": params, "build_s": build_s}
        t0 = time.perf_counter()
        try:
            # Not under no_grad: that would select PyTorch's fused attention fast path
            # (aten::_native_multi_head_attention), which the TorchScript exporter lacks.
            torch.onnx.export(
                model, args, str(tmp), dynamo=exporter == "dynamo",
                opset_version=17 if exporter == "torchscript" else 18, input_names=names,
            )  # fmt: skip
            proto = onnx.load(str(tmp))
            proto.ir_version = min(proto.ir_version, 10)
            big = proto.ByteSize() > 1_900_000_000
            onnx.save(proto, str(path), save_as_external_data=big, location="model.onnx.data")
        except Exception as e:  # noqa: BLE001 - an exporter's failure is a result
            meta["error"] = _describe(e)
        meta["export_s"] = round(time.perf_counter() - t0, 1)
        for leftover in folder.glob("tmp.onnx*"):
            leftover.unlink()
        (folder / "export.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------
# Check worker (onnx, onnxruntime, numpy; runs in a subprocess)


def _feeds(sess: Any) -> dict[str, Any]:
    """Random inputs for an onnxruntime session (ids in [0, 100), masks all 1, dynamic
    dims 1): OPT numbers positions by the attention mask's running sum, so a mask of
    random ids indexes past its position table."""
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        if "int" in inp.type and "mask" in inp.name:
            feeds[inp.name] = np.ones(shape, np.int64 if "int64" in inp.type else np.int32)
        elif "int" in inp.type:
            dtype = np.int64 if "int64" in inp.type else np.int32
            feeds[inp.name] = rng.integers(0, 100, size=shape).astype(dtype)
        elif "bool" in inp.type:
            feeds[inp.name] = np.ones(shape, dtype=bool)
        else:
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _run_shapes(path: str) -> list[list[int]]:
    """Output shapes of one onnxruntime run on random inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return [list(o.shape) for o in sess.run(None, _feeds(sess))]


def _zero_layout(w: Any, s: Any) -> str:
    """How the zero-scored nonzero weights of one layer are laid out (a hint at why)."""
    import numpy as np

    nz = w != 0
    z = nz & np.isneginf(s)
    if z.sum() == nz.sum():
        return "whole layer"
    if w.ndim >= 3:  # Conv: are the zeros whole spatial taps (padding or stride only)?
        zt = z.reshape(w.shape[0] * w.shape[1], -1).sum(0)
        nt = nz.reshape(w.shape[0] * w.shape[1], -1).sum(0)
        if np.all((zt == 0) | (zt == nt)):
            return "taps"
    for axis, label in ((0, "axis0"), (1, "axis1")):
        other = tuple(a for a in range(w.ndim) if a != axis)
        zc, nc = z.sum(axis=other), nz.sum(axis=other)
        if np.all((zc == 0) | (zc == nc)):
            return f"whole slices {label}"
    if w.ndim >= 3 and _dead_tap_zeros(w, s):  # SSD's last head on a 1x1 map
        flat_z = z.reshape(w.shape[0], w.shape[1], -1)
        flat_n = nz.reshape(w.shape[0], w.shape[1], -1)
        dead = flat_z.sum((0, 1)) == flat_n.sum((0, 1))
        zc, nc = flat_z[:, :, ~dead].sum((1, 2)), flat_n[:, :, ~dead].sum((1, 2))
        if np.all((zc == 0) | (zc == nc)):
            return TAPS_AND_SLICES
    return "scattered"


# A conv whose zeros are whole dead taps plus whole output channels on the live taps: the
# first part counts as "taps" (explained), the second as "whole slices axis0".
TAPS_AND_SLICES = "taps + whole slices axis0"


def _dead_tap_zeros(w: Any, s: Any) -> int:
    """Nonzero weights of a conv on taps where every nonzero weight scores 0."""
    import numpy as np

    nz = (w != 0).reshape(w.shape[0] * w.shape[1], -1)
    z = nz & np.isneginf(s).reshape(nz.shape)
    dead = z.sum(0) == nz.sum(0)
    return int(z[:, dead].sum())


# Operands that multiply the flow (weights, normalization scales, Mul): an all-zero tensor
# there (a zero-initialized head or residual-branch scale) cuts every path through it.
MULTIPLYING = {
    "Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1), "Mul": (0, 1),
    "BatchNormalization": (1,), "LayerNormalization": (1,), "InstanceNormalization": (1,),
    "GroupNormalization": (1,), "SimplifiedLayerNormalization": (1,),
}  # fmt: skip


def zero_init(model: Any) -> dict[str, Any]:
    """Float initializers (more than one value) that are entirely 0 and multiply the flow."""
    import numpy as np
    from onnx import numpy_helper

    used = {
        node.input[i]
        for node in model.graph.node
        for i in MULTIPLYING.get(node.op_type, ())
        if i < len(node.input)
    }
    names = [
        t.name
        for t in model.graph.initializer
        if t.name in used
        and t.data_type in (1, 10, 11)
        and np.prod(t.dims) > 1
        and not numpy_helper.to_array(t).any()
    ]
    return {"zero_init_tensors": len(names), "zero_init_examples": names[:10]}


def check_worker(original: str, pruned: str, scores: str) -> None:
    """Compare scores with the original weights and run both models; print a JSON line."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    out: dict[str, Any] = {}
    model = onnx.load(original)
    weights: dict[str, Any] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    weights[node.output[0]] = a.t
    out.update(zero_init(model))
    if os.path.exists(scores):
        total = nonzero = zeros = 0
        layouts: dict[str, int] = defaultdict(int)
        layers: list[dict[str, Any]] = []
        with np.load(scores) as npz:
            for key in npz.files:
                if key not in weights:
                    continue
                w = numpy_helper.to_array(weights[key])
                s = npz[key]
                if w.shape != s.shape:
                    continue
                nzm = w != 0
                zm = nzm & np.isneginf(s)
                total += w.size
                nonzero += int(nzm.sum())
                n0 = int(zm.sum())
                zeros += n0
                if n0:
                    how = _zero_layout(w, s)
                    if how == TAPS_AND_SLICES:
                        taps = _dead_tap_zeros(w, s)
                        layouts["taps"] += taps
                        layouts["whole slices axis0"] += n0 - taps
                    else:
                        layouts[how] += n0
                    layers.append({"name": key, "zero": n0, "nonzero": int(nzm.sum()), "how": how})
        out.update(
            weights=total, nonzero=nonzero, zero_scored=zeros, zero_layouts=dict(layouts),
            zero_layers=layers,
        )  # fmt: skip
    try:
        ref = _run_shapes(original)
        out["original_shapes"] = ref
    except Exception as e:  # noqa: BLE001 - any onnxruntime failure is a result
        out["original_error"] = str(e).strip().splitlines()[0][:300]
        ref = None
    if os.path.exists(pruned):
        try:
            got = _run_shapes(pruned)
            out["pruned_shapes"] = got
            out["runs"] = ref is not None and got == ref
        except Exception as e:  # noqa: BLE001 - any onnxruntime failure is a result
            out["runs"] = False
            out["pruned_error"] = str(e).strip().splitlines()[0][:300]
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------
# Driver (no torch)


def _last_json(text: str) -> dict[str, Any]:
    """The last JSON object printed on its own line, or {}."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(line))
    return {}


def _error_line(stderr: str) -> str:
    """onnxflow's `error: ...` line, else the last line of a traceback or of stderr."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    return lines[-1] if lines else ""


def _run(cmd: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    """Run a subprocess with a timeout: (exit code or None on timeout, stdout, stderr, s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, time.perf_counter() - t0
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def export_all(name: str, exporters: list[str], args: argparse.Namespace) -> dict[str, str]:
    """Export `name` with the exporters not cached yet (one subprocess); errors by exporter."""
    folders = {e: Path(args.work) / f"{name}.{e}" for e in exporters}
    todo = [e for e in exporters if args.reexport or not (folders[e] / "export.json").exists()]
    if not todo:
        return {}
    for e in todo:
        (folders[e] / "export.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "_export", name, args.work, ",".join(todo)]
    code, _, err, _ = _run(cmd, args.export_timeout * len(todo))
    if code == 0:
        return {}
    why = f"timeout after {args.export_timeout * len(todo):.0f} s" if code is None else ""
    return {e: why or _error_line(err)[:400] for e in todo}


def run_one(name: str, exporter: str, failed: str, args: argparse.Namespace) -> dict[str, Any]:
    """Prune and check one exported model; the record for the JSON."""
    rec: dict[str, Any] = {"model": name, "family": family_of(name), "exporter": exporter}
    folder = Path(args.work) / f"{name}.{exporter}"
    onnx_path = folder / "model.onnx"
    meta = folder / "export.json"
    if meta.exists():
        rec.update(json.loads(meta.read_text()))
    if "error" in rec or not meta.exists() or not onnx_path.exists():
        rec["status"] = "export failed"
        rec.setdefault("error", failed or "no export")
        return rec
    rec["onnx_mb"] = round(onnx_path.stat().st_size / 2**20, 1)
    pruned, scores = folder / "pruned.onnx", folder / "scores.npz"
    for p in (pruned, scores, folder / "report.json"):
        p.unlink(missing_ok=True)
    launcher = "import sys, onnxflow_launcher; sys.exit(onnxflow_launcher.main())"
    cmd = [
        sys.executable, "-c", launcher, "prune", str(onnx_path), "-o", str(pruned),
        "--sparsity", str(SPARSITY), "--iterations", str(ITERATIONS),
        "--scores", str(scores), "--report", str(folder / "report.json"), "--quiet",
    ]  # fmt: skip
    code, _, err, secs = _run(cmd, args.prune_timeout)
    rec["prune_s"] = round(secs, 1)
    if code is None:
        rec["status"], rec["error"] = "timeout", f"timeout after {args.prune_timeout:.0f} s"
    elif code == 0:
        rec["status"] = "pruned"
    else:
        rec["status"] = "refused" if code == 2 else "crashed"
        rec["error"] = _error_line(err)[:400]
        rec["exit"] = code
    noise = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("error:")]
    if code == 2 and noise:
        rec["stderr_extra_lines"] = len(noise)
    if (folder / "report.json").exists():
        rep = json.loads((folder / "report.json").read_text())
        tot = rep.get("totals", {})
        rec["prunable"] = tot.get("params")
        rec["kept"] = tot.get("kept")
        rec["log_flow"] = tot.get("log_flow")
        rec["emptied_layers"] = len(tot.get("emptied_layers", []))
    cmd = [sys.executable, __file__, "_check", str(onnx_path), str(pruned), str(scores)]
    ccode, out, err, csecs = _run(cmd, args.prune_timeout)
    rec["check_s"] = round(csecs, 1)
    if ccode != 0:
        rec["check_error"] = "timeout" if ccode is None else _error_line(err)[:300]
    rec.update(_last_json(out))
    if not args.keep:
        for p in (pruned, scores):
            p.unlink(missing_ok=True)
    return rec


def selected(args: argparse.Namespace) -> tuple[list[str], list[dict[str, Any]]]:
    """The model names to run and the records of the ones skipped."""
    fams = {
        "transformers": TRANSFORMERS,
        "transformers_more": TRANSFORMERS_MORE,
        "timm": TIMM,
        "segmentation": SEGMENTATION,
        "classification": CLASSIFICATION,
        "detection": DETECTION,
    }
    names = [n for f in (args.family or list(fams)) for n in fams[f]]
    if args.only:
        names = [n for n in names if re.search(args.only, n)]
    # The slowest models last, so that an interrupted run has covered the most models.
    names.sort(key=lambda n: any(re.match(h, n) for h in HEAVY))
    skipped = []
    if not args.big:
        for n in names:
            if n in GIANTS:
                skipped.append(
                    {"model": n, "family": family_of(n), "exporter": "both",
                     "status": "skipped", "error": f"{GIANTS[n]}; run with --big"}
                )  # fmt: skip
        names = [n for n in names if n not in GIANTS]
    return names, skipped


def _versions() -> dict[str, str]:
    """Versions of the packages involved (read from metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "transformers", "onnxscript", "onnx", "onnxruntime",
                "onnxruntime-gpu", "numpy"):  # fmt: skip
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _machine() -> str:
    """CPU model and count."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _commit() -> str:
    """HEAD, the last commit that changed onnxflow's code, and '+dirty' for local changes."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        code = git("log", "-1", "--format=%h", "--", "onnxflow", "onnxflow_launcher.py")
        dirty = git("status", "--porcelain", "onnxflow", "onnxflow_launcher.py")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (onnxflow/ last changed in {code}{' + uncommitted changes' if dirty else ''})"


# --------------------------------------------------------------------------------------------
# Markdown


def error_class(line: str) -> str:
    """An error line with names and numbers blanked, to group models failing alike."""
    line = re.sub(r"'[^']*'", "'…'", line)
    line = re.sub(r"\b\d+(\.\d+)?\b", "N", line)
    return line


def _unexplained(r: dict[str, Any]) -> int:
    """Zero-scored nonzero weights not laid out as whole conv taps (padding/stride)."""
    lay = r.get("zero_layouts", {})
    return int(r.get("zero_scored", 0)) - int(lay.get("taps", 0))


def render(data: dict[str, Any]) -> str:
    """docs/models.md from the JSON."""
    recs = sorted(data["results"].values(), key=lambda r: (r["family"], r["model"], r["exporter"]))
    m = data["meta"]
    families = sorted({r["family"] for r in recs})
    out = [
        "# Coverage benchmark: " + ", ".join(families),
        "",
        m.get("label", ""),
        "",
        f"- onnxflow commit: `{m['commit']}`; measured {m['date']}",
        f"- machine: {m['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- pruning: `onnxflow prune --sparsity {SPARSITY} --iterations {ITERATIONS} --scores`",
        "- commands (from the repository root; results merged by model and exporter):",
    ]
    out += [f"  - `{c['command']}` ({c['date']}, {c['minutes']} min)" for c in m["runs"]]
    out += [
        "",
        "Random weights as each library initializes them; inputs 64x64 (classification; "
        "inception_v3 96, alexnet, vgg* and maxvit_t 224), 128x128 (segmentation, "
        "detection; SSD resizes to its own size), transformers from small configs (2 layers, "
        "width 64, 8 tokens or 32x32 images). TorchScript: "
        "`torch.onnx.export(dynamo=False, opset_version=17)`; dynamo: "
        "`dynamo=True, opset_version=18`; IR version set to <= 10.",
        "",
        "Columns: **zero** = nonzero weights whose `--scores` log-score is -inf (score 0); "
        "**unexpl.** = those not laid out as whole convolution taps (taps that only ever see "
        "padding or that a stride skips score 0 correctly); **how** = layout of the zeros "
        "(whole layer / taps / whole slices along a weight axis / scattered); **zero-init** = "
        "float tensors entirely 0 that multiply the flow (weights, normalization scales, "
        "Mul); **runs** = the pruned model runs in onnxruntime with the original's output "
        "shapes.",
        "",
        "## Summary",
        "",
    ]
    by: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in recs:
        by[(r["family"], r["exporter"])][r["status"]] += 1
        if r["status"] == "pruned" and _unexplained(r) == 0 and r.get("runs"):
            by[(r["family"], r["exporter"])]["clean"] += 1
    cols = ["pruned", "clean", "refused", "crashed", "timeout", "export failed", "skipped"]
    out.append("| family | exporter | " + " | ".join(cols) + " |")
    out.append("|---|---|" + "---|" * len(cols))
    for (fam, exp), c in sorted(by.items()):
        out.append(f"| {fam} | {exp} | " + " | ".join(str(c.get(k, 0)) for k in cols) + " |")
    out += [
        "",
        "**clean** = pruned, runs with the original's output shapes, and 0 unexplained zero "
        "scores.",
        "",
        "## Failure classes (onnxflow's error line, names and numbers blanked)",
        "",
    ]
    classes: dict[str, list[str]] = defaultdict(list)
    for r in recs:
        if r["status"] in ("refused", "crashed", "timeout"):
            classes[f"{r['status']}: {error_class(r.get('error', ''))}"].append(
                f"{r['model']} ({r['exporter'][0:2]})"
            )
    for cls, models in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        out.append(f"- **{len(models)}** `{cls}`: {', '.join(models)}")
    if not classes:
        out.append("none")
    seen = {r["model"] for r in recs}
    lists = [TRANSFORMERS, SEGMENTATION, CLASSIFICATION, DETECTION, TRANSFORMERS_MORE, TIMM]
    # the lists this file's runs drew from: one with a model in it
    missing = [n for li in lists if seen.intersection(li) for n in li if n not in seen]
    if missing:
        out += ["", f"## Not run yet ({len(missing)}; `--resume` runs them)", ""]
        out.append(", ".join(missing))
    out += ["", "## Export failures (PyTorch's exporters, not onnxflow)", ""]
    exp_fail: dict[str, list[str]] = defaultdict(list)
    for r in recs:
        if r["status"] == "export failed":
            exp_fail[r.get("error", "")[:200]].append(f"{r['model']} ({r['exporter']})")
    for line, models in sorted(exp_fail.items(), key=lambda kv: -len(kv[1])):
        out.append(f"- **{len(models)}** `{line}`: {', '.join(models)}")
    if not exp_fail:
        out.append("none")
    out += ["", "## Nonzero weights scoring 0 (pruned models)", ""]
    zs = [r for r in recs if r.get("zero_scored")]
    if zs:
        out.append("| model | exporter | zero / nonzero | unexpl. | how | zero-init tensors |")
        out.append("|---|---|---|---|---|---|")
        for r in zs:
            how = ", ".join(f"{k} {v}" for k, v in r.get("zero_layouts", {}).items())
            zi = r.get("zero_init_tensors", 0)
            out.append(
                f"| {r['model']} | {r['exporter']} | {r['zero_scored']} / {r.get('nonzero')} "
                f"({100 * r['zero_scored'] / max(1, r.get('nonzero', 1)):.2f}%) | "
                f"{_unexplained(r)} | {how} | {zi} |"
            )
    else:
        out.append("none")
    out += [
        "",
        "## All results",
        "",
        "| model | family | exporter | status | params | export s | prune s | zero | unexpl. "
        "| zero-init | runs | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        err = r.get("error", "") or r.get("pruned_error", "") or r.get("check_error", "")
        err = err.replace("|", "\\|")
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else ""
        runs = {True: "yes", False: "**no**", None: ""}[r.get("runs")]
        zero = r.get("zero_scored", "")
        unex = _unexplained(r) if "zero_scored" in r else ""
        out.append(
            f"| {r['model']} | {r['family']} | {r['exporter']} | {r['status']} | {params} | "
            f"{r.get('export_s', '')} | {r.get('prune_s', '')} | {zero} | {unex} | "
            f"{r.get('zero_init_tensors', '')} | {runs} | "
            f"{err} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    """Parse options, run the selected models, write the JSON and the markdown."""
    if len(sys.argv) > 1 and sys.argv[1] == "_export":
        export_worker(*sys.argv[2:5])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_check":
        check_worker(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="regular expression on model names (re.search)")
    fams = ["classification", "segmentation", "detection", "transformers", "transformers_more",
            "timm"]  # fmt: skip
    ap.add_argument("--family", action="append", choices=fams, help="repeatable; default all")
    ap.add_argument("--exporter", choices=["torchscript", "dynamo", "both"], default="both")
    ap.add_argument("--jobs", type=int, default=1, help="models in parallel")
    ap.add_argument("--big", action="store_true", help="include the models over ~140M params")
    ap.add_argument("--out", default=str(ROOT / "docs" / "models.md"), help="markdown table")
    ap.add_argument("--json", default=None, help="raw results (default: --out with .json)")
    ap.add_argument("--work", default="/tmp/onnxflow-zoo", help="exports are cached here")
    ap.add_argument("--reexport", action="store_true", help="export again even if cached")
    ap.add_argument("--keep", action="store_true", help="keep pruned models and scores")
    ap.add_argument("--fresh", action="store_true", help="start a new JSON (else merge)")
    ap.add_argument("--resume", action="store_true", help="skip models already in the JSON")
    ap.add_argument("--export-timeout", type=float, default=600)
    ap.add_argument("--prune-timeout", type=float, default=600)
    ap.add_argument("--label", default=None, help="a line written under the title")
    ap.add_argument("--render-only", action="store_true", help="rewrite --out from --json")
    ap.add_argument(
        "--refresh-zero-init", action="store_true", help="with --render-only: recount them"
    )
    args = ap.parse_args()
    json_path = Path(args.json or Path(args.out).with_suffix(".json"))
    if args.render_only:
        data = json.loads(json_path.read_text())
        if args.refresh_zero_init:  # recount from the cached exports (onnx only, no torch)
            import onnx

            for rec in data["results"].values():
                path = Path(args.work) / f"{rec['model']}.{rec['exporter']}" / "model.onnx"
                if path.exists():
                    rec.update(zero_init(onnx.load(str(path))))
            json_path.write_text(json.dumps(data, indent=1) + "\n")
        Path(args.out).write_text(render(data))
        return 0
    data: dict[str, Any] = {"meta": {"runs": []}, "results": {}}
    if json_path.exists() and not args.fresh:
        data = json.loads(json_path.read_text())
    names, skipped = selected(args)
    exporters = ["torchscript", "dynamo"] if args.exporter == "both" else [args.exporter]
    if args.resume:
        done = data["results"]
        names = [n for n in names if any(f"{n}/{e}" not in done for e in exporters)]
    for s in skipped:
        data["results"][f"{s['model']}/both"] = s
    command = "PYTHONPATH=$PWD python benchmarks/zoo.py " + shlex.join(sys.argv[1:])
    start = time.time()
    data["meta"].update(
        commit=_commit(), machine=_machine(), versions=_versions(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip
    if args.label is not None:
        data["meta"]["label"] = args.label
    run_entry = {"command": command, "date": data["meta"]["date"], "minutes": 0.0}
    data["meta"]["runs"].append(run_entry)

    def write() -> None:
        run_entry["minutes"] = round((time.time() - start) / 60, 1)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(json_path)
        Path(args.out).write_text(render(data))

    def one(name: str) -> list[dict[str, Any]]:
        out = []
        try:
            failed = export_all(name, exporters, args)
        except Exception as e:  # noqa: BLE001 - the benchmark itself must go on
            failed = dict.fromkeys(exporters, f"benchmark: {type(e).__name__}: {e}")
        for exporter in exporters:
            try:
                out.append(run_one(name, exporter, failed.get(exporter, ""), args))
            except Exception as e:  # noqa: BLE001 - the benchmark itself must go on
                err = f"benchmark: {type(e).__name__}: {e}"
                out.append({"model": name, "family": family_of(name), "exporter": exporter,
                            "status": "crashed", "error": err})  # fmt: skip
        return out

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for i, recs in enumerate(pool.map(one, names), 1):
            for rec in recs:
                data["results"][f"{rec['model']}/{rec['exporter']}"] = rec
                extra = rec.get("error", "") or (
                    f"zero {rec.get('zero_scored')} unexpl {_unexplained(rec)} "
                    f"runs {rec.get('runs')}"
                )
                print(
                    f"[{i}/{len(names)}] {rec['model']} {rec['exporter']}: {rec['status']} "
                    f"(export {rec.get('export_s', '-')} s, prune {rec.get('prune_s', '-')} s) "
                    f"{extra}",
                    flush=True,
                )
            write()
    write()
    shutil.rmtree(Path(args.work) / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
