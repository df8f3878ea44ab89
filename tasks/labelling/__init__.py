"""Active learning: choosing the texts worth labelling and the annotation tool they go to.

- `selection`: the day's picks from scored texts: margin (breaking ties), diversity, class balance, no
  near-duplicate of a labelled or queued text, a random control share. Pure; `tasks/label.py` runs it.
- `label_studio`: Label Studio's REST API over httpx (projects, task import with pre-annotations, annotated tasks
  since a cursor, JSON export/import files) and the resolution of a task's annotations into one label.

The annotations come back through the crawl source kind `label_studio` (`tasks/sources/label_studio.py`).
"""
