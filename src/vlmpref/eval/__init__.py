"""Stage 5 of the pipeline: metrics on held-out data, each with its count and a 95% interval.

answers.py (accuracy rules), hallucination.py (CHAIR), pope.py (yes/no probing), relevance.py,
preference.py (held-out pair log-probs), vocab.py (object vocabularies), stats.py (intervals),
evaluate.py (one model on a split; the evaluation folder and its schema), run.py (`vlmpref eval`),
during_training.py (held-out metrics while training).
"""
