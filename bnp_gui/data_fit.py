"""Does the opened data fit the model? What was converted and what is wrong, in words (Qt-free).

The engine conforms images (channels repeated or turned into luma, bilinear resize) without
complaint, and labels are plain integers; a user who opened the wrong folder would only see
odd numbers. These checks name each conversion and each misfit so the window can show them in a
warning banner. The engine's own errors (e.g. labels beyond the model's classes during an
evaluation) are reported as they come.
"""

from __future__ import annotations

from bnp_gui.data_roles import ROLE_LABELS

FEW_SAMPLES = {"clean": 50, "train": 50, "test": 100}  # "very few": below these


def fit_warnings(spec, num_classes: int, sets: dict) -> list[str]:
    """One line per misfit between the model's input and the data sets (role → ImageSet)."""
    lines = []
    for role, data in sets.items():
        name = ROLE_LABELS.get(role, role).split(" (")[0]
        shape = tuple(data.images.shape[1:])
        if len(shape) == 3:
            c, h, w = shape
            if c != spec.channels:
                how = "grey repeated" if c == 1 else "luma 0.299R+0.587G+0.114B"
                lines.append(
                    f"{name}: {c}-channel images converted to the model's {spec.channels} ({how})."
                )
            if (h, w) != tuple(spec.size):
                lines.append(
                    f"{name}: {h}×{w} images resized to the model's "
                    f"{spec.size[0]}×{spec.size[1]} (bilinear)."
                )
        if len(data.labels):
            top = int(data.labels.max())
            low = int(data.labels.min())
            if top >= num_classes or low < 0:
                bad = int(((data.labels >= num_classes) | (data.labels < 0)).sum())
                lines.append(
                    f"{name}: labels {low}–{top}, but the model has {num_classes} classes "
                    f"(0–{num_classes - 1}): {bad} of {len(data)} samples cannot be right."
                )
        few = FEW_SAMPLES.get(role)
        if few is not None and len(data) < few:
            what = "ACC/ASR" if role == "test" else "its statistics"
            lines.append(
                f"{name}: only {len(data)} samples; {what} will be noisy "
                f"(at least {few} recommended)."
            )
    return lines
