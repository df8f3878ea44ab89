"""The demo (`python -m tasks.demo`): the corpus, the local site it is published on, the runner."""
