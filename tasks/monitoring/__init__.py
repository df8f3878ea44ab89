"""Production monitoring internals: what `tasks.score` and `tasks.monitor` share.

- `drift`: population stability index (PSI) of labels, of binned numbers (length, confidence), and
  out-of-vocabulary rates (validate's batch drift checks use the same PSI).
- `estimate`: calibration of top-1 confidence and the label-free performance estimate (CBPE-style).
- `scorer`: a registered version's serving model, with every class's probability.
- `reference`: a version's reference predictions on its own test slices, built once and cached.
- `predictions`: the prediction log (served and batch-scored rows) by day.
- `feedback`: labelled rows that arrived later, joined with predictions by text sha256.
- `breach`: emitted breaches, the cooldown, and which breach a `decide` consumed.
- `report`: the monitor's plots and table.
"""
