"""Evaluation: metrics (classification with intervals, ROUGE, factoid ACC/MRR, perplexity and
bits per byte), perplexity over raw text with overlapping windows, and ``evaluate_task``, which
scores a task's examples through a tiny model protocol (``Scorer`` / ``Generator``)."""
