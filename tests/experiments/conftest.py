"""The study tests reuse the training tests' tiny BERT and tiny GLUE folder."""

from tests.training.conftest import tiny_glue, tiny_model  # noqa: F401  (fixtures)
