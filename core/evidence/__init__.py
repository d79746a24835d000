"""What the suspect samples tell: suspects and the target, trigger reconstruction, the suggestion,
held-out verdicts, recovery and the repair. Imports the packages below it (up to `defense`).
"""
