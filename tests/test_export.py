"""Export → reload → identical ACC/ASR, in every format; atomic, never over the input."""

import json

import numpy as np
import pytest
import torch

from core.cli import main
from core.data.images import ImageSet
from core.defense.inspection import Inspection
from core.errors import BnpError
from core.io.checkpoint import load_checkpoint
from core.io.export import atomic_write, export_model, write_json
from core.model.architectures import build_model


@pytest.fixture
def seed_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 3)
                module.bias.normal_(0, 0.2)
    path = tmp_path / "resnet20_badnets_3_0.1_0.pth"
    torch.save({"state_dict": model.state_dict(), "trigger": torch.rand(3, 3, 3)}, path)
    return path


def _npy_folder(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    np.save(folder / "data.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", rng.integers(0, 10, n))
    return folder


@pytest.mark.parametrize("fmt", ["seed", "state_dict", "safetensors"])
def test_export_reload_gives_previewed_numbers(seed_checkpoint, tmp_path, fmt):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    rng = torch.Generator().manual_seed(1)
    test = ImageSet(torch.rand(96, 3, 32, 32, generator=rng), torch.randint(0, 10, (96,)))
    inspection.collect(test)
    mask = inspection.mask({"bnp": 1.0, "clp": 1.0})
    assert mask.count() > 0
    preview = inspection.evaluate(test, mask=mask, target=0)
    plain = inspection.evaluate(test, target=0)
    assert preview.asr is not None
    out = tmp_path / f"pruned.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    export_model(
        inspection.model,
        out,
        mask=mask,
        fmt=fmt,
        metadata=inspection.ckpt.metadata,
        trigger=inspection.ckpt.trigger,
        source=seed_checkpoint,
    )
    reloaded = Inspection(load_checkpoint(out), device="cpu")
    if fmt != "state_dict":  # the trigger travels with the seed format and the metadata
        assert reloaded.trigger is not None
    again = reloaded.evaluate(test, trigger=inspection.trigger, target=0)
    assert again == preview
    assert again != plain or mask.count() == 0
    # the loaded model in the inspection was not modified by the export
    assert inspection.evaluate(test, target=0) == plain


def test_export_refuses_input_and_leaves_no_temp_file(seed_checkpoint, tmp_path):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    original = seed_checkpoint.read_bytes()
    with pytest.raises(BnpError, match="overwrite the input"):
        export_model(inspection.model, seed_checkpoint, source=seed_checkpoint)
    assert seed_checkpoint.read_bytes() == original

    def broken(_tmp):
        raise RuntimeError("disk full")

    target = tmp_path / "report.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [seed_checkpoint.name, "report.json"]
    )


def test_cli_defend_report_and_export(seed_checkpoint, tmp_path, capsys):
    clean = _npy_folder(tmp_path / "clean", 64, 0)
    test = _npy_folder(tmp_path / "test", 80, 1)
    report = tmp_path / "r.json"
    out = tmp_path / "pruned.pth"
    code = main(
        ["defend", str(seed_checkpoint), "--method", "bnp", "--threshold", "1", "--clean",
         str(clean), "--test", str(test), "--target", "0", "--out", str(out), "--report",
         str(report), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    data = json.loads(report.read_text())
    assert data["method"] == "bnp" and data["threshold"] == 1.0
    assert set(data["scores"]) >= {"bn1", "layer1.0.bn1", "layer3.2.bn2"}
    assert len(data["scores"]["layer3.2.bn2"]) == 64
    assert sum(len(v) for v in data["flagged"].values()) == data["pruned"] > 0
    for key in ("acc_before", "asr_before", "acc_after", "asr_after"):
        assert isinstance(data[key], float)
    table = capsys.readouterr().out
    assert "bnp" in table and f"{data['acc_after']:6.2f}" in table
    # the export reproduces the reported numbers
    args = ["defend", str(out), "--method", "clp", "--threshold", "100", "--test", str(test)]
    assert main([*args, "--target", "0", "--report", str(tmp_path / "r2.json")]) == 0
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["acc_before"] == data["acc_after"]
    assert again["asr_before"] == data["asr_after"]


def test_asr_from_trigger_none_or_poisoned_samples(seed_checkpoint):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    rng = torch.Generator().manual_seed(2)
    test = ImageSet(torch.rand(90, 3, 32, 32, generator=rng), torch.randint(0, 10, (90,)))
    mask = inspection.mask({"clp": 1.0})
    stamped = ImageSet(inspection.trigger.apply(test.images), test.labels)
    for m in (None, mask):
        own = inspection.evaluate(test, mask=m, target=3)  # the checkpoint's trigger
        assert own == inspection.evaluate(test, mask=m, trigger=inspection.trigger, target=3)
        # the same samples poisoned beforehand: same ASR over the same victims
        assert inspection.evaluate(test, mask=m, poisoned=stamped, target=3) == own
        assert own.n_poison == int((test.labels != 3).sum()) and own.asr is not None
    none = inspection.evaluate(test, trigger=None, target=3)
    assert none.asr is None and none.n_poison == 0
    assert none.acc == inspection.evaluate(test, target=3).acc
    # a folder relabelled by the attacker (every label the target): all samples count
    relabelled = ImageSet(stamped.images, torch.full_like(test.labels, 3))
    assert inspection.evaluate(test, poisoned=relabelled, target=3).n_poison == len(test)
    with pytest.raises(BnpError, match="not both"):
        inspection.evaluate(test, trigger=inspection.trigger, poisoned=stamped, target=3)
    with pytest.raises(ValueError, match="checkpoint"):
        inspection.evaluate(test, trigger="own", target=3)


def test_cli_asr_from_poisoned_folder_equals_trigger(seed_checkpoint, tmp_path):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    test = _npy_folder(tmp_path / "test", 60, 3)
    images = torch.from_numpy(np.load(test / "data.npy")).permute(0, 3, 1, 2).float() / 255
    stamped = (inspection.trigger.apply(images) * 255).round().byte().permute(0, 2, 3, 1)
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    np.save(poisoned / "data.npy", stamped.numpy())
    np.save(poisoned / "labels.npy", np.load(test / "labels.npy"))
    args = ["defend", str(seed_checkpoint), "--method", "clp", "--test", str(test)]
    reports = []
    for extra in ([], ["--poisoned", str(poisoned)]):
        reports.append(tmp_path / f"r{len(reports)}.json")
        assert main([*args, *extra, "--target", "1", "--report", str(reports[-1])]) == 0
    by_trigger, by_folder = (json.loads(r.read_text()) for r in reports)
    assert by_folder["asr_before"] is not None
    assert by_folder["asr_before"] == by_trigger["asr_before"]
    assert by_folder["asr_after"] == by_trigger["asr_after"]
    both = [*args, "--poisoned", str(poisoned), "--trigger", str(poisoned / "data.npy")]
    assert main(both) == 2
    no_test = ["defend", str(seed_checkpoint), "--method", "clp", "--poisoned", str(poisoned)]
    assert main(no_test) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert "No such file" in err and "Traceback" not in err
    bad = tmp_path / "x.pth"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, bad)
    assert main(["defend", str(bad), "--method", "ep"]) == 2
    assert "--train" in capsys.readouterr().err


def test_scores_are_cached_until_new_statistics(seed_checkpoint):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    a = ImageSet(torch.rand(20, 3, 32, 32), torch.zeros(20, dtype=torch.long))
    b = ImageSet(torch.rand(20, 3, 32, 32) * 0.5, torch.zeros(20, dtype=torch.long))
    with pytest.raises(BnpError, match="EP needs"):
        inspection.scores("ep")
    inspection.collect(a, a)
    first = inspection.scores("bnp")
    assert inspection.scores("bnp") is first
    ep = inspection.scores("ep")
    inspection.collect(b)  # new clean statistics: BNP changes, EP is kept
    assert inspection.scores("ep") is ep
    assert not torch.equal(inspection.scores("bnp")["bn1"], first["bn1"])


def test_set_spec_drops_statistics_and_scores(seed_checkpoint):
    inspection = Inspection(load_checkpoint(seed_checkpoint), device="cpu")
    data = ImageSet(torch.rand(12, 3, 28, 28), torch.zeros(12, dtype=torch.long))
    inspection.collect(data)
    inspection.scores("bnp")
    inspection.set_spec(size=(24, 24), mean=(0.5,), std=(0.25,))
    assert inspection.spec.size == (24, 24) and inspection.clean_stats is None
    with pytest.raises(BnpError, match="BNP needs"):
        inspection.scores("bnp")
    inspection.collect(data)  # the new spec is used: 28×28 images become 24×24 inputs
    assert inspection.clean_stats.layers["bn1"].count == 12 * 24 * 24


def test_cli_input_overrides(seed_checkpoint, tmp_path, capsys):
    clean = _npy_folder(tmp_path / "clean", 16, 0)
    args = ["defend", str(seed_checkpoint), "--method", "bnp", "--clean", str(clean)]
    assert main([*args, "--input-size", "24", "24", "--mean", "0.5", "--std", "0.25"]) == 0
    assert "input 3×24×24, mean (0.5,) std (0.25,)" in capsys.readouterr().err
    assert main([*args, "--std", "0"]) == 2  # a clear error, not a traceback
    assert "std [0.0] contains 0" in capsys.readouterr().err
