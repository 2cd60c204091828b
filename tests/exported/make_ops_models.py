"""Export the small models of normalization-by-division and recurrent cells (needs torch and
transformers; nothing is downloaded, weights are random):

    python tests/exported/make_ops_models.py

- ops_recurrent.onnx: a 2-layer bidirectional LSTM, then a GRU and an RNN, then a linear head
  (TorchScript exporter: ONNX LSTM/GRU/RNN nodes with zero initial states).
- ops_t5_rmsnorm.onnx: a one-layer T5 encoder from a tiny config; its RMSNorm is
  `h * (1 / sqrt(mean(h^2) + eps))` with a Div of a constant by a flow.
- ops_normalize.onnx: F.normalize between two linear layers: `x / Expand(Clip(ReduceL2(x)))`.

The .onnx files are committed so that the tests (tests/test_rules_recurrent.py,
test_exported.py) need no framework.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(10, 4, batch_first=True)
        self.rnn = nn.RNN(4, 3, batch_first=True, bidirectional=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(self.gru(self.lstm(x)[0])[0])[0]
        return self.head(y.mean(dim=1))  # every step: both directions reach the output


class Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.normalize(self.a(x), dim=-1))


class T5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        cfg = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
        self.m = T5EncoderModel(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=ids).last_hidden_state


def _export(model: nn.Module, args: tuple, name: str) -> None:
    path = HERE / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, path, dynamo=False, opset_version=17)
    m = onnx.load(path)
    m.ir_version = min(m.ir_version, 10)
    onnx.save(m, path)


def main() -> None:
    torch.manual_seed(0)
    _export(Recurrent(), (torch.ones(1, 5, 6),), "ops_recurrent.onnx")
    _export(Normalize(), (torch.ones(2, 8),), "ops_normalize.onnx")
    _export(T5(), (torch.ones(1, 6, dtype=torch.long),), "ops_t5_rmsnorm.onnx")


if __name__ == "__main__":
    main()
