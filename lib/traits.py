"""The Big-Five vocabulary every paper shares: trait codes, their names, and the two poles.

    from lib.traits import LEVELS, NAMES, OPPOSITE, TRAITS
    for t in TRAITS:                      # "O", "C", "E", "A", "N": the order of every table, matrix column and loop
        print(NAMES[t], LEVELS)           # "Openness" ("high", "low")

Label matrices (classifier, questionnaires) have their columns in TRAITS order.
"""
from __future__ import annotations

TRAITS = ("O", "C", "E", "A", "N")
NAMES = {"O": "Openness", "C": "Conscientiousness", "E": "Extraversion", "A": "Agreeableness", "N": "Neuroticism"}
LEVELS = ("high", "low")
OPPOSITE = {"high": "low", "low": "high"}
