"""Class names for labels: the checkpoint's metadata, else the data's, else the dataset's."""

from __future__ import annotations


def class_names(session) -> list[str] | None:
    """Names of the model's classes when anything tells them, else None (show indices); the
    names come from files, so their control characters are written out (core.safety.paths)."""
    names = _class_names(session)
    if names is None:
        return None
    from core.safety.paths import printable

    return [printable(name, 80) for name in names]


def _class_names(session) -> list[str] | None:
    if session.inspection is None:
        return None
    meta = session.inspection.ckpt.metadata
    n = meta.num_classes
    if meta.class_names and len(meta.class_names) == n:
        return list(meta.class_names)
    for data in session.data.values():
        if data.class_names and len(data.class_names) == n:
            return list(data.class_names)
    from core.data import names as known

    by_dataset = {
        "fashion-mnist": getattr(known, "FASHION_MNIST_CLASSES", None),
        "cifar10": getattr(known, "CIFAR10_CLASSES", None),
        "cifar-10": getattr(known, "CIFAR10_CLASSES", None),
    }
    names = by_dataset.get((meta.dataset or "").lower())
    return list(names) if names and len(names) == n else None


def label_text(names: list[str] | None, label: int | None) -> str:
    """'3 Dress' with names, '3' without, '–' for no label."""
    if label is None:
        return "–"
    if names and 0 <= label < len(names):
        return f"{label} {names[label]}"
    return str(label)
