"""The three defenses: one statistics pass, EP/BNP/CLP scores, checks on statistics, evaluation and
the `Inspection` that ties them together. Imports `safety`, `data`, `model`, `io`.
"""
