"""The validate step's parts (the step itself is `tasks/validate.py`).

- `expectations`: the Great Expectations suite derived from the config, run in memory and offline, and its
  result reduced to one `ExpectationOutcome` per expectation.
- `quarantine`: the rows that failed, one quarantine row per failed expectation, each with its reason.
- `batch_checks`: the checks of the batch as a whole (duplicate texts, label and length drift against the accepted
  history) and the reasons a batch is rejected.
- `report`: `validation_report.html`, rendered from the template `report.html.j2` beside it.
"""

STEP = "validate"  # the step these parts serve: names its quarantine rows, its errors and its GX validation
