"""The pruning loop, as parts (Tanaka et al. 2020, algorithm 1, and its baselines).

- `scorers`: what ranks the weights on the masked network (SynFlow through the flow
  engine, |W|, seeded random);
- `schedule`: how many weights are kept after each iteration;
- `constraints`: what every selection must respect (`min_kept`, the N:M `pattern`;
  `exclude` acts earlier, when the weight DAG is built);
- `selector`: from scores and a count to masks (exact global top-k, or per layer);
- `refiner`: SynFlow's steps at the edge of collapse, checked and split;
- `loop`: the loop that ties them together.

Only `scorers` (SynFlow's) and `refiner` touch the flow engine; selection reads the
neutral `onnxflow.scores.Scores`. This package imports nothing on import, so that
`onnxflow.masks` can import the schedule from it.
"""
