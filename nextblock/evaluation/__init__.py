"""Evaluation (work in progress, see the evaluation issue): answer extraction and scoring
(answers.py) and a sandbox for generated code (sandbox.py)."""
