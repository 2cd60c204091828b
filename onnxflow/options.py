"""Pruning options: one frozen dataclass, validated once, shared by the API and the CLI.

Every choice set and every default is written here once; the CLI derives its click options
from them (`click.Choice(SCHEDULES)`, `default=DEFAULTS.schedule`), so its help cannot
disagree with the library. Errors name the field (`min_kept`), never a flag."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from onnxflow.errors import OnnxflowError, Opt

Schedule = Literal["exponential", "linear"]
Scope = Literal["global", "local"]
Provider = Literal["auto", "cpu", "cuda"]
Method = Literal["synflow", "magnitude", "random"]
ZeroInit = Literal["ones", "strict"]
Granularity = Literal["weight", "channel"]

# The choice sets, in the order help lists them (the first is not always the default).
SCHEDULES: tuple[str, ...] = get_args(Schedule)
SCOPES: tuple[str, ...] = get_args(Scope)
PROVIDERS: tuple[str, ...] = get_args(Provider)
METHODS: tuple[str, ...] = get_args(Method)
ZERO_INITS: tuple[str, ...] = get_args(ZeroInit)
ZERO_INIT_CHOICES = ZERO_INITS  # the former name
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
RANKINGS: tuple[str, ...] = ("flow", "flow-per-weight", "flow-per-flop")
"""Channel mode: how channel groups are ranked (docs/channels.md)."""


def one_of(choices: tuple[str, ...]) -> str:
    """`'a', 'b' or 'c'`: a choice set in an error message."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_choice(field_name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OnnxflowError(
            "{opt} must be {choices}, got {value!r}",
            opt=Opt(field_name),
            choices=one_of(choices),
            value=value,
        )


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
        check_choice("zero_init", self.zero_init, ZERO_INITS)
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise OnnxflowError(f"iterations must be an integer >= 1, got {it!r}")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("scope", self.scope, SCOPES)
        check_choice("method", self.method, METHODS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise OnnxflowError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        k = self.min_kept
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise OnnxflowError(
                "{opt} must be an integer >= 0, got {k!r}", opt=Opt("min_kept"), k=k
            )
        check_choice("provider", self.provider, PROVIDERS)
        object.__setattr__(self, "input_shapes", check_input_shapes(self.input_shapes))

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


def check_input_shapes(
    input_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """`input_shapes` as a dict, each dimension checked to be a positive integer."""
    for name, shape in input_shapes.items():
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise OnnxflowError(
                "{opt} for {name!r} must be positive integers, got {shape}",
                opt=Opt("input_shapes"),
                name=name,
                shape=shape,
            )
    return dict(input_shapes)


def check_pattern(pattern: object) -> tuple[int, int]:
    """A valid N:M pattern as a pair of ints: 1 <= N < M."""
    ok = (
        isinstance(pattern, tuple | list)
        and len(pattern) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pattern)
    )
    if not ok or not (1 <= pattern[0] < pattern[1]):  # type: ignore[index]
        raise OnnxflowError(
            "{opt} must be (N, M) with integers 1 <= N < M (e.g. (2, 4)), got {pattern!r}",
            opt=Opt("pattern"),
            pattern=pattern,
        )
    return int(pattern[0]), int(pattern[1])  # type: ignore[index]


DEFAULTS = PruneOptions(sparsity=0.0)
"""Every option at its default (the sparsity, which has none, aside): what help shows."""
