"""Labelled image sets: one module per format (`idx`, `npy`, `imagefolder`, `cifar`, `stl10`), the
`load_images` entry point, checks on inputs, and triggers (they stamp images). Imports `errors`
and `safety` only.
"""
