"""Labelled synthetic corpus for sensitive-data detection (see synth.py)."""

from tests.corpus.synth import CLASSES, SEED, Doc, Score, build_corpus, score, totals

__all__ = ["CLASSES", "SEED", "Doc", "Score", "build_corpus", "score", "totals"]
