"""Checkpoints in and models out: the loading pipeline (`checkpoint`), one reader per format,
TorchScript and BackdoorBench files, and the exports. Imports the packages below it (`safety`,
`data`, `model`).
"""
