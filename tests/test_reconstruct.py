"""The ASR estimate from a trigger reconstructed out of the suspected samples
(core/evidence/reconstruct.py).

The tiny planted models of tests/suspect_models.py: a clean-label attack (the poisoned samples
are target-class images with the patch, their label unchanged), where the estimate from the
suspected samples goes wrong and the reconstructed trigger does not; a blend, which gives no
trigger to reconstruct; and a clean model, on which a stamped patch does nothing.
"""

from __future__ import annotations

import pytest
import torch
from suspect_models import BLEND, TARGET, TRIGGER, planted

from core.data.images import ImageSet
from core.evidence.reconstruct import MAX_STAMPED_SETS, locate_trigger, stamp
from core.evidence.suggest import suggest
from core.evidence.suspects import (
    SuspectAnalysis,
    analyse_suspects,
    estimate_asr,
    make_probe,
    reconstruction,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


def _analysed(p):
    p.inspection.collect(p.clean, p.train)
    probe = make_probe(p.inspection, p.train, p.clean)
    return probe, analyse_suspects(p.inspection, p.train, p.clean, probe=probe)


@pytest.fixture(scope="module")
def clean_label():
    """The clean-label planted model: target bars dimmed to 0.45 under a decoy bar."""
    torch.set_num_threads(1)
    p = planted(rate=0.1, clean_label=0.45)
    return (p, *_analysed(p))


# ---- the locator ---------------------------------------------------------------------------


def test_locator_finds_the_patch_and_not_the_constant_border():
    g = torch.Generator().manual_seed(0)

    def images(n):
        x = torch.zeros(n, 3, 20, 20)  # a 2-pixel border that is 0 in every image
        x[:, :, 2:-2, 2:-2] = torch.rand(n, 3, 16, 16, generator=g)
        return x

    clean = images(300)
    suspected = images(40)
    patch = torch.tensor([0.95, 0.05, 0.85]).reshape(3, 1, 1)
    suspected[:, :, 13:16, 13:16] = patch
    suspected[:3] = images(3)  # a few clean samples among the suspected ones
    found = locate_trigger(suspected, clean)
    want = torch.zeros(3, 20, 20, dtype=torch.bool)
    want[:, 13:16, 13:16] = True
    assert torch.equal(found.pixels, want)
    assert torch.allclose(found.values[:, 14, 14], patch.flatten())
    stamped = stamp(clean[:5], found)
    assert torch.allclose(stamped[:, :, 13:16, 13:16], patch.expand(5, 3, 3, 3))
    assert torch.equal(stamped[:, :, :13], clean[:5, :, :13])


def test_locator_leaves_out_what_the_target_class_itself_shares():
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(200, 1, 12, 12, generator=g)
    own = torch.rand(30, 1, 12, 12, generator=g)
    own[:, :, 5, :] = 1.0  # the target class's own feature, rare among all clean samples
    suspected = torch.rand(40, 1, 12, 12, generator=g)
    suspected[:, :, 5, :] = 1.0
    suspected[:, :, 0:2, 0:2] = 1.0  # the trigger
    without = locate_trigger(suspected, clean)
    assert without.pixels[0, 5].all()  # taken for the trigger when the class is not checked
    found = locate_trigger(suspected, clean, own)
    assert int(found.pixels.sum()) == 4 and found.pixels[0, 0:2, 0:2].all()


def test_locator_finds_the_planted_patch_in_the_models_input_space():
    torch.set_num_threads(1)
    p = planted(rate=0.1)
    probe = make_probe(p.inspection, p.train, p.clean)
    found = locate_trigger(probe.inputs["train"][p.poisoned], probe.inputs["clean"])
    want = torch.zeros(1, 16, 16, dtype=torch.bool)
    want[:, 13:, 13:] = True
    assert torch.equal(found.pixels, want)
    # values as the model sees them: the white patch, normalised as the probe prepares it
    white = p.inspection.spec.prepare(TRIGGER.apply(torch.zeros(1, 1, 16, 16)))[0]
    assert torch.allclose(found.values[want], white[want])


# ---- the estimate ----------------------------------------------------------------------------


def test_clean_label_estimate_tracks_the_real_asr_where_the_suspected_one_does_not(clean_label):
    p, probe, analysis = clean_label
    assert analysis.target == TARGET
    precision = float(p.poisoned[analysis.poisoned].double().mean())
    assert precision >= 0.9  # the analysis found the clean-label samples
    rebuilt = reconstruction(probe, analysis, p.clean.labels)
    assert rebuilt.accepted, rebuilt.reason
    # the patch, and at most the dimmed bar the poisoned samples share (the stand-in for CLA's
    # perturbation): nothing of the clean images' rows
    pixels = rebuilt.trigger.pixels[0]
    assert pixels[13:, 13:].all()
    assert not pixels[:13].any() or pixels[:13].nonzero()[:, 0].eq(TARGET + 2).all()
    worst_old = 0.0
    for mask in (None, p.inspection.mask({"ep": 2.0}), p.inspection.mask({"bnp": 3.0})):
        real = p.inspection.evaluate(p.test, mask=mask).asr
        new = estimate_asr(probe, analysis, mask, p.clean.labels)
        old = estimate_asr(probe, analysis, mask, p.clean.labels, basis="suspected")
        assert new.basis == "stamped" and old.basis == "suspected"
        assert new.n == int((p.clean.labels != TARGET).sum())
        assert new.suspected == analysis.n_suspected
        assert abs(new.percent - real) <= 10, (mask, new.percent, real)
        assert new.low <= new.percent <= new.high
        worst_old = max(worst_old, abs(old.percent - real))
    # the poisoned samples are classified as the target with or without the backdoor
    assert worst_old > 30
    text = new.describe()
    assert "stamped with a trigger reconstructed from" in text and "suspected samples" in text
    assert new.to_dict()["basis"] == "stamped"


def test_the_suggestion_uses_and_names_the_reconstructed_trigger(clean_label):
    p, probe, analysis = clean_label
    s = suggest(p.inspection, analysis, p.train, p.clean, probe=probe)
    assert s.estimate.basis == "stamped"
    assert "stamped with a trigger reconstructed from" in s.why
    assert s.to_dict()["n_suspected"] == analysis.n_suspected
    if s.repairs:
        assert p.inspection.evaluate(p.test, mask=s.mask).asr <= 15


def test_a_blend_trigger_falls_back_to_the_suspected_samples():
    torch.set_num_threads(1)
    p = planted(rate=0.1, trigger=BLEND)
    p.inspection.collect(p.clean, p.train)
    probe = make_probe(p.inspection, p.train, p.clean)
    # the poisoned samples as suspected (the tiny model's blend is too weak to be found):
    # what is tested here is the estimate
    analysis = SuspectAnalysis(
        p.poisoned.double(), p.poisoned.clone(), p.train.labels, TARGET, 1.0, "planted"
    )
    rebuilt = reconstruction(probe, analysis, p.clean.labels)
    assert not rebuilt.accepted and rebuilt.name is None
    assert "share no value" in rebuilt.reason  # the blend moves every pixel differently
    assert not any(name.startswith("stamped") for name in probe.inputs)
    e = estimate_asr(probe, analysis, None, p.clean.labels)
    same = estimate_asr(probe, analysis, None, p.clean.labels, basis="suspected")
    assert e.basis == "suspected" and e.percent == same.percent and e.n == same.n
    assert "suspected samples" in e.describe() and "stamped" not in e.describe()


def test_a_stamp_the_model_ignores_is_not_used():
    """A clean model, and suspected samples sharing a patch it never learnt: the patch is
    located, but the stamped clean samples keep their classes, so the estimate falls back."""
    torch.set_num_threads(1)
    p = planted(rate=0.0)
    x = p.train.float_images().clone()
    x[:40] = TRIGGER.apply(x[:40])
    labels = p.train.labels.clone()
    labels[:40] = TARGET
    train = ImageSet(x, labels, p.train.class_names)
    probe = make_probe(p.inspection, train, p.clean)
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    poisoned[:40] = True
    analysis = SuspectAnalysis(
        torch.where(poisoned, 1.0, 0.0).double(), poisoned, labels, TARGET, 1.0, "planted"
    )
    rebuilt = reconstruction(probe, analysis, p.clean.labels)
    assert rebuilt.trigger is not None and rebuilt.trigger.count == 9
    assert not rebuilt.accepted and rebuilt.share < 0.5 and "not used" in rebuilt.reason
    e = estimate_asr(probe, analysis, None, p.clean.labels)
    assert e.basis == "suspected"
    # no target (a clean model's analysis): nothing is reconstructed or stamped
    none = SuspectAnalysis(analysis.scores, poisoned, labels, None, 0.0, "no evidence")
    assert not reconstruction(probe, none, p.clean.labels).accepted
    assert estimate_asr(probe, none, None, p.clean.labels).percent is None
    assert not any(name.startswith("stamped") for name in probe.inputs)


def test_marks_make_new_reconstructions_and_old_stamped_sets_are_dropped(clean_label):
    p, probe, analysis = clean_label
    first = reconstruction(probe, analysis, p.clean.labels)
    suspected = analysis.suspected_index().tolist()
    names = set()
    for i in suspected[: MAX_STAMPED_SETS + 2]:
        marked = analysis.with_marks({i: False})  # one suspected sample marked clean
        rebuilt = reconstruction(probe, marked, p.clean.labels)
        assert rebuilt.accepted and rebuilt.n_suspected == analysis.n_suspected - 1
        names.add(rebuilt.name)
        assert estimate_asr(probe, marked, None, p.clean.labels).suspected == rebuilt.n_suspected
    assert len(names) == MAX_STAMPED_SETS + 2 and first.name not in names
    kept = [name for name in probe.inputs if name.startswith("stamped")]
    assert len(kept) == MAX_STAMPED_SETS
