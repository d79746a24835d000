"""Making backdoored models to test with: `bnp train`'s options and training, the clean-label
attack. Imports the packages below it (up to `defense`).
"""
