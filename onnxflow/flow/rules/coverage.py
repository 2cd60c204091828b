"""The rest of the default-domain operator set (up to opset 21): which ops pass flow, which
end it, and which are refused, with the reason.

`REFUSED` lists every default-domain op that has no rule, and why (docs/flow_rules.md shows
the same table; a test checks that every op of onnx's operator list is registered or listed
here). An op without a rule is only an error when flow reaches it: a node that computes
only from constants and shapes runs as it is.
"""

from __future__ import annotations

from onnxflow.flow.registry import FlowRule, flow_rule, register_flow_rule
from onnxflow.flow.rules.elementwise import Cast, PassThrough
from onnxflow.flow.rules.indexing import EndsFlow

# Pointwise functions: pass flow like every activation (the paper's R has no activations).
MORE_POINTWISE = (
    "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cos", "Cosh", "Sin", "Sinh", "Tan",
    "Shrink",
)  # fmt: skip
for _op in MORE_POINTWISE:
    register_flow_rule(_op, PassThrough)

# Outputs that are data about the flow (signs, random draws shaped or weighted by it, one-hot
# codes, boxes and grids of coordinates), not flow: nothing goes back.
MORE_ENDS_FLOW = (
    "Sign", "EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
    "OneHot", "NonMaxSuppression", "AffineGrid", "Range",
)  # fmt: skip
for _op in MORE_ENDS_FLOW:
    register_flow_rule(_op, EndsFlow)


@flow_rule("CastLike")
class CastLike(FlowRule):
    """Like Cast, to the type of the second operand: a float target keeps the flow."""

    def forward(self, g, node, x, target, *, saturate=1):
        values = getattr(target, "values", None)
        if values is not None and values.dtype.kind != "f":
            return Cast().forward(g, node, x, to=_onnx_type(values.dtype), saturate=saturate)
        return x

    def backward(self, g, node, grads, x, target, *, saturate=1):
        return [grads[0], None]


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(dtype)


_NO_FLOAT_INPUT = "its inputs cannot be float tensors, so flow never reaches it"
_CONTROL = (
    "control flow: a flow inside its subgraphs is not supported; export the model unrolled "
    "(torch.onnx with a fixed sequence length) or with its branch chosen"
)
_QUANTIZED = "quantized ops are refused: prune the float model (docs/quantization.md)"
_SEQUENCE = "sequence and optional values are not tensors; flow through them is not supported"

REFUSED: dict[str, str] = {
    **dict.fromkeys(("If", "Loop", "Scan", "SequenceMap"), _CONTROL),
    **dict.fromkeys(
        (
            "ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
            "SequenceErase", "SequenceInsert", "SequenceLength", "SplitToSequence",
            "Optional", "OptionalGetElement", "OptionalHasElement",
        ),
        _SEQUENCE,
    ),
    **dict.fromkeys(
        (
            "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
            "QLinearMatMul", "ConvInteger", "MatMulInteger",
        ),
        _QUANTIZED,
    ),
    **dict.fromkeys(
        (
            "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
            "BitwiseXor", "StringConcat", "StringNormalizer", "StringSplit", "RegexFullMatch",
            "TfIdfVectorizer", "ImageDecoder", "HannWindow", "HammingWindow", "BlackmanWindow",
            "MelWeightMatrix", "ConstantOfShape", "Constant", "RandomNormal", "RandomUniform",
        ),
        _NO_FLOAT_INPUT,
    ),
    **dict.fromkeys(
        ("Round", "Floor", "Ceil"),
        "piecewise constant (a quantizer): its derivative is zero, so no flow passes; a "
        "straight-through rule is a choice to register with onnxflow.register_flow_rule",
    ),
    "Mod": "a sawtooth of its input: no positive linear rule; flow through it is refused",
    "Det": "a product of all rows (degree n in its input): not supported on the flow path",
    "ReduceProd": "a product of all reduced elements (degree n): not supported on the flow "
    "path",
    "Unique": "its outputs are a set of values and their positions, not a function of the "
    "flow with a transpose",
    "DeformConv": "its weight is a layer onnxflow does not prune (only Conv, ConvTranspose, "
    "Gemm and MatMul weights are), and its sampling offsets are coordinates",
    "GridSample": "bilinear/bicubic sampling at coordinates: not supported yet on the flow "
    "path (no model of the zoo needs it)",
    "RoiAlign": "pooling over boxes (detection heads): not supported yet on the flow path",
    "MaxRoiPool": "pooling over boxes (detection heads): not supported yet on the flow path",
    "DFT": "a complex transform (spectral front ends): not supported yet on the flow path",
    "STFT": "a complex transform (spectral front ends): not supported yet on the flow path",
    "NegativeLogLikelihoodLoss": "a training loss: prune the inference graph",
    "SoftmaxCrossEntropyLoss": "a training loss: prune the inference graph",
}  # fmt: skip
