"""Run folders and resume (infer/checkpoint.py): a finished run is never overwritten by a fresh
one, a resumed run continues exactly or refuses and names every difference."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import bayesdistill as bd
from _helpers import states_equal, tiny_mlp, toy_classification, without_time


def _bnn(seed: int = 0) -> bd.BNN:
    return bd.BNN(tiny_mlp(seed=seed), dataset_size=64)


def _fit(bnn, data=None, **kw):
    kw.setdefault("epochs", 3)
    kw.setdefault("batch_size", 16)
    kw.setdefault("lr", 0.01)
    kw.setdefault("seed", 7)
    kw.setdefault("progress", False)
    return bd.fit(bnn, data if data is not None else toy_classification(64), **kw)


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    _fit(_bnn(), checkpoint_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(bd.RunExistsError, match=r"already holds a run.*resume=True.*overwrite=True"):
        _fit(_bnn(), checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # untouched
    # the refusal comes before any work: not even the data are validated
    with pytest.raises(bd.RunExistsError):
        bd.fit(_bnn(), "not data", epochs=1, checkpoint_dir=tmp_path, progress=False)
    # overwrite replaces it
    result = _fit(_bnn(seed=1), checkpoint_dir=tmp_path, overwrite=True, epochs=1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1 and len(result.history) == 1
    with pytest.raises(ValueError, match="contradict"):
        _fit(_bnn(), checkpoint_dir=tmp_path, overwrite=True, resume=True)


@pytest.mark.parametrize("change", [
    {"lr": 0.02}, {"batch_size": 8}, {"seed": 8}, {"kl_weight": 0.5}, {"num_particles": 2},
    {"lr_schedule": "cosine"}, {"local_reparam": True}, {"clip_grad_norm": 1.0},
])
def test_resume_refuses_changed_settings_and_names_them(tmp_path, change):
    _fit(_bnn(), checkpoint_dir=tmp_path, callbacks=[lambda r, b: r["epoch"] == 1])
    key = next(iter(change))
    with pytest.raises(bd.ResumeMismatchError, match=rf"different settings: .*{key}: the checkpoint has"):
        _fit(_bnn(), checkpoint_dir=tmp_path, resume=True, **change)


def test_resume_refuses_other_data_and_another_network(tmp_path):
    x, y = toy_classification(64)
    _fit(_bnn(), (x, y), checkpoint_dir=tmp_path, callbacks=[lambda r, b: r["epoch"] == 1])
    with pytest.raises(bd.ResumeMismatchError, match="data: the checkpoint has"):
        _fit(_bnn(), (x + 1.0, y), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(bd.ResumeMismatchError, match="data: the checkpoint has"), \
            pytest.warns(UserWarning, match="dataset_size is 64 but the training data hold 48"):
        _fit(_bnn(), (x[:48], y[:48]), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(bd.ResumeMismatchError, match="another network"):
        _fit(bd.BNN(tiny_mlp(hidden=7), dataset_size=64), (x, y), checkpoint_dir=tmp_path, resume=True)
    # the matching run still resumes
    assert len(_fit(_bnn(), (x, y), checkpoint_dir=tmp_path, resume=True).history) == 3


def test_epochs_fewer_than_done_refuse_and_more_than_planned_need_extend(tmp_path):
    _fit(_bnn(), epochs=3, checkpoint_dir=tmp_path)
    with pytest.raises(bd.ResumeMismatchError, match=r"already holds 3 finished epochs.*epochs=2"):
        _fit(_bnn(), epochs=2, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(bd.ResumeMismatchError, match=r"planned for 3 epochs.*extend=True"):
        _fit(_bnn(), epochs=5, checkpoint_dir=tmp_path, resume=True)
    result = _fit(_bnn(), epochs=5, checkpoint_dir=tmp_path, resume=True, extend=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    # the extended plan is the new plan: resuming it again needs no extend
    assert len(_fit(_bnn(), epochs=5, checkpoint_dir=tmp_path, resume=True).history) == 5


def test_extending_a_cosine_run_continues_the_rate_downwards(tmp_path):
    """A finished 3-epoch cosine run extended to 6 epochs keeps lowering the rate from the last
    one it used; it never warms back up (the issue: .0075, .0025, 0, .0025, .0075, .01)."""
    lr = 0.01
    first = _fit(_bnn(), epochs=3, lr=lr, lr_schedule="cosine", checkpoint_dir=tmp_path)
    used = first.column("lr")
    assert used == pytest.approx([lr * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    more = _fit(_bnn(), epochs=6, lr=lr, lr_schedule="cosine", checkpoint_dir=tmp_path, resume=True, extend=True)
    rates = more.column("lr")
    assert rates[:3] == used
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[3] == pytest.approx(used[2])
    assert all(r > 0 for r in rates)
    # an interrupted cosine run extended continues from the rate the old plan would have used next
    part = tmp_path / "part"
    _fit(_bnn(), epochs=4, lr=lr, lr_schedule="cosine", checkpoint_dir=part, callbacks=[lambda r, b: r["epoch"] == 2])
    ext = _fit(_bnn(), epochs=6, lr=lr, lr_schedule="cosine", checkpoint_dir=part, resume=True, extend=True)
    planned_next = lr * (1 + math.cos(math.pi * 2 / 4)) / 2
    assert ext.column("lr")[2] == pytest.approx(planned_next)
    assert all(a >= b for a, b in zip(ext.column("lr"), ext.column("lr")[1:]))


def test_an_interrupted_extension_resumes_bit_identically(tmp_path):
    kw = dict(lr_schedule="cosine", lr=0.02)
    _fit(_bnn(), epochs=2, checkpoint_dir=tmp_path / "a", **kw)
    straight = _bnn()
    r_straight = _fit(straight, epochs=5, checkpoint_dir=tmp_path / "a", resume=True, extend=True, **kw)
    _fit(_bnn(), epochs=2, checkpoint_dir=tmp_path / "b", **kw)
    _fit(_bnn(), epochs=5, checkpoint_dir=tmp_path / "b", resume=True, extend=True,
         callbacks=[lambda r, b: r["epoch"] == 3], **kw)
    resumed = _bnn()
    r_resumed = _fit(resumed, epochs=5, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert without_time(r_resumed.history) == without_time(r_straight.history)
    assert states_equal(resumed.state_dict(), straight.state_dict())


def test_checkpoints_load_without_executing_code_and_damage_is_one_clear_error(tmp_path):
    _fit(_bnn(), epochs=1, checkpoint_dir=tmp_path / "ok")
    data = (tmp_path / "ok" / "checkpoint.pt").read_bytes()
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(bd.PosteriorFormatError, match="could not be read as a checkpoint.*--overwrite"):
        _fit(_bnn(), epochs=2, checkpoint_dir=tmp_path / "trunc", resume=True)

    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    (tmp_path / "evil").mkdir()
    with open(tmp_path / "evil" / "checkpoint.pt", "wb") as fh:
        pickle.dump(Boom(), fh)
    with pytest.raises(bd.PosteriorFormatError):
        _fit(_bnn(), epochs=2, checkpoint_dir=tmp_path / "evil", resume=True)
    assert not (tmp_path / "pwned").exists()


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".history.csv.x.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    other = tmp_path / ".unrelated.tmp"
    other.write_bytes(b"keep")
    _fit(_bnn(), epochs=1, checkpoint_dir=tmp_path)
    assert not any(p.exists() for p in stale) and other.exists()
    assert (tmp_path / "history.csv").read_text().startswith("epoch,")


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _fit(_bnn(), checkpoint_dir=f)
