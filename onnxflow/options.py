"""Pruning options: one frozen dataclass, validated once, shared by the API and the CLI."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from onnxflow.errors import OnnxflowError

Schedule = Literal["exponential", "linear"]
Scope = Literal["global", "local"]
Provider = Literal["auto", "cpu", "cuda"]
Method = Literal["synflow", "magnitude", "random"]
ZeroInit = Literal["ones", "strict"]
ZERO_INIT_CHOICES: tuple[str, ...] = ("ones", "strict")


@dataclass(frozen=True)
class PruneOptions:
    """What to prune and how.

    Attributes:
        sparsity: fraction of prunable weights set to zero, in [0, 1).
        iterations: number of score/prune rounds (the paper uses 100).
        schedule: how the kept fraction shrinks over the rounds.
        scope: one threshold over all layers (`global`) or the same fraction per layer (`local`).
        input_shapes: concrete shapes for graph inputs, by input name; a free batch dimension
            defaults to 1, any other free dimension must be given here.
        provider: onnxruntime execution provider for the flow computation.
        method: `synflow`, or the paper's baselines `magnitude` (|W|) and `random` (seeded),
            through the same schedule and scope.
        seed: seed of `random`.
        exclude: glob patterns; weights whose initializer or node name matches are never
            pruned and do not count in N.
        min_kept: every layer keeps at least this many weights (its best), even where that
            means keeping more than the schedule's count.
        pattern: `(N, M)`: in every group of M consecutive weights along a layer's
            input-channel axis keep at most N (N:M sparsity). Layers whose input channels are
            not a multiple of M are skipped (reported). With `sparsity=None` the pattern alone
            sets the target; a sparsity must keep no more weights than the pattern allows.
        sparse_storage: write pruned weights as ONNX sparse initializers (COO).
        zero_init: what flow does at zero-initialized parameters (an all-zero weight tensor,
            an all-zero normalization or layer scale), which libraries use as a training
            trick and which would zero R or whole branches' scores: `ones` reads them as
            ones so flow crosses them (all-zero weights are then not prunable and not in
            N); `strict` keeps the paper's R as the weights stand (docs/flow_rules.md).
    """

    sparsity: float | None
    iterations: int = 100
    schedule: Schedule = "exponential"
    scope: Scope = "global"
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    provider: Provider = "auto"
    method: Method = "synflow"
    seed: int = 0
    exclude: tuple[str, ...] = ()
    min_kept: int = 0
    pattern: tuple[int, int] | None = None
    sparse_storage: bool = False
    zero_init: ZeroInit = "ones"

    def __post_init__(self) -> None:
        s = self.sparsity
        if s is None and self.pattern is None:
            raise OnnxflowError("give a sparsity (or a pattern that implies one)")
        if s is not None and (
            isinstance(s, bool) or not isinstance(s, int | float) or not (0.0 <= s < 1.0)
        ):
            raise OnnxflowError(f"sparsity must be a number in [0, 1), got {s!r}")
        if self.pattern is not None:
            object.__setattr__(self, "pattern", check_pattern(self.pattern))
        if not isinstance(self.sparse_storage, bool):
            raise OnnxflowError(
                f"sparse_storage must be True or False, got {self.sparse_storage!r}"
            )
        if self.zero_init not in ZERO_INIT_CHOICES:
            raise OnnxflowError(f"zero_init must be 'ones' or 'strict', got {self.zero_init!r}")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise OnnxflowError(f"iterations must be an integer >= 1, got {it!r}")
        if self.schedule not in ("exponential", "linear"):
            raise OnnxflowError(
                f"schedule must be 'exponential' or 'linear', got {self.schedule!r}"
            )
        if self.scope not in ("global", "local"):
            raise OnnxflowError(f"scope must be 'global' or 'local', got {self.scope!r}")
        if self.method not in ("synflow", "magnitude", "random"):
            raise OnnxflowError(
                f"method must be 'synflow', 'magnitude' or 'random', got {self.method!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise OnnxflowError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        k = self.min_kept
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise OnnxflowError(f"min-kept must be an integer >= 0, got {k!r}")
        if self.provider not in ("auto", "cpu", "cuda"):
            raise OnnxflowError(f"provider must be 'auto', 'cpu' or 'cuda', got {self.provider!r}")
        for name, shape in self.input_shapes.items():
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
                raise OnnxflowError(
                    f"input shape for {name!r} must be positive integers, got {shape}"
                )
        object.__setattr__(self, "input_shapes", dict(self.input_shapes))

    @property
    def density(self) -> float | None:
        """Fraction of prunable weights kept at the end (None: set by the pattern)."""
        return None if self.sparsity is None else 1.0 - self.sparsity

    @staticmethod
    def sparsity_from_compression(compression: float) -> float:
        """The paper's compression C keeps 10^-C of the weights."""
        if isinstance(compression, bool) or not isinstance(compression, int | float):
            raise OnnxflowError(f"compression must be a number >= 0, got {compression!r}")
        if not math.isfinite(compression) or compression < 0:
            raise OnnxflowError(f"compression must be a finite number >= 0, got {compression!r}")
        return 1.0 - 10.0 ** (-compression)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` (the CLI's --input-shape)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise OnnxflowError(f"--input-shape must look like NAME=1x3x224x224, got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise OnnxflowError(
            f"--input-shape {text!r}: dimensions must be positive integers separated by 'x'"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise OnnxflowError(f"--input-shape {text!r}: dimensions must be positive integers")
    return name, shape


def check_pattern(pattern: object) -> tuple[int, int]:
    """A valid N:M pattern as a pair of ints: 1 <= N < M."""
    ok = (
        isinstance(pattern, tuple | list)
        and len(pattern) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pattern)
    )
    if not ok or not (1 <= pattern[0] < pattern[1]):  # type: ignore[index]
        raise OnnxflowError(
            f"pattern must be N:M with integers 1 <= N < M (e.g. 2:4), got {pattern!r}"
        )
    return int(pattern[0]), int(pattern[1])  # type: ignore[index]


def parse_pattern(text: str) -> tuple[int, int]:
    """Parse `N:M` (the CLI's --pattern)."""
    n, sep, m = text.partition(":")
    try:
        if not sep:
            raise ValueError
        pattern = (int(n), int(m))
    except ValueError:
        raise OnnxflowError(f"--pattern must look like N:M (e.g. 2:4), got {text!r}") from None
    if not (1 <= pattern[0] < pattern[1]):
        raise OnnxflowError(f"--pattern {text!r}: need integers 1 <= N < M (e.g. 2:4)")
    return pattern
