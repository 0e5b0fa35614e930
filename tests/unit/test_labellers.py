"""Named labellers: tokens read from their mounted Secrets, as the kubelet lays them out, rotated and revoked
without a restart; anonymous feedback refused once any labeller is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from regrow.serving.feedback import Rejected
from regrow.serving.labellers import RELOAD_SECONDS, Labellers

CRM = b"crm-token-0123456789abcdef"
DESK = b"desk-token-0123456789abcdef"


def _mount(root: Path, name: str, keys: dict[str, bytes]) -> None:
    """A Secret as the kubelet mounts it: the files in a hidden, timestamped folder, and a link per key to
    them through ``..data``; writing it again swaps the link, as an update of the Secret does."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"..2026_12_07_{sum(p.name.startswith('..2026') for p in folder.iterdir())}"
    data.mkdir()
    for key, value in keys.items():
        (data / key).write_bytes(value + b"\n")
    link = folder / "..data"
    fresh = folder / "..data_tmp"
    fresh.symlink_to(data.name)
    os.replace(fresh, link)
    for existing in [p for p in folder.iterdir() if not p.name.startswith(".")]:
        existing.unlink()
    for key in keys:
        (folder / key).symlink_to(f"..data/{key}")


def test_each_token_names_its_labeller_and_anonymous_feedback_is_refused(tmp_path: Path) -> None:
    _mount(tmp_path, "crm", {"token": CRM})
    _mount(tmp_path, "fraud-desk", {"token": DESK, "short": b"too-short"})
    labellers = Labellers(str(tmp_path))
    assert labellers.who(CRM) == "crm" and labellers.who(DESK) == "fraud-desk"
    for token in (None, b"too-short", b"x" * 32, CRM + b"x", CRM[:-1]):  # none, a short one ignored, strangers
        with pytest.raises(Rejected) as error:
            labellers.who(token)
        assert error.value.status == 401 and (token is None or token.decode() not in str(error.value))


def test_no_labellers_named_means_anyone_labels_anonymously_and_a_token_is_refused() -> None:
    labellers = Labellers(None)
    assert labellers.who(None) is None
    with pytest.raises(Rejected) as error:
        labellers.who(CRM)
    assert error.value.status == 401


def test_a_token_is_rotated_and_revoked_by_changing_the_secret_alone(tmp_path: Path) -> None:
    """Two keys while one is rotated, then the old one deleted: the pod reads the folder again within
    RELOAD_SECONDS and needs no restart. A labeller whose Secret is missing (an empty folder) has no token."""
    now = [0.0]
    _mount(tmp_path, "crm", {"token": CRM})
    (tmp_path / "desk").mkdir()  # its Secret does not exist (the volume is optional)
    labellers = Labellers(str(tmp_path), clock=lambda: now[0])
    assert labellers.who(CRM) == "crm"
    rotated = b"crm-token-rotated-0123456789"
    _mount(tmp_path, "crm", {"token": CRM, "next": rotated})
    now[0] += RELOAD_SECONDS
    assert labellers.who(rotated) == "crm" and labellers.who(CRM) == "crm"
    _mount(tmp_path, "crm", {"next": rotated})
    now[0] += RELOAD_SECONDS / 2
    assert labellers.who(CRM) == "crm"  # not read again yet
    now[0] += RELOAD_SECONDS / 2
    with pytest.raises(Rejected):
        labellers.who(CRM)  # revoked
    assert labellers.who(rotated) == "crm" and labellers.tokens["desk"] == []
