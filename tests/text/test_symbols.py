"""The constructed symbol tables must equal the official ones exactly (ids are list indices)."""

from __future__ import annotations

import json

import pytest

from gsv_accel.text.errors import UnknownPhoneError
from gsv_accel.text.symbols import (
    PAD,
    arpabet_phones,
    ids_to_phones,
    phone_to_id,
    phones_to_ids,
    symbols,
    yue_phones,
    zh_phones,
)


@pytest.fixture(scope="module")
def reference_tables(reference_file) -> dict:
    with open(reference_file("gpt_sovits_symbols.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tables_equal_reference(reference_tables, version):
    ours = symbols(version)
    ref = reference_tables[version]
    assert len(ours) == len(ref)
    mismatches = [(i, a, b) for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b]
    assert not mismatches, f"first mismatches (id, ours, official): {mismatches[:10]}"


def test_sizes_and_prefix():
    v1, v2 = symbols("v1"), symbols("v2")
    assert len(v1) == 322 and len(v2) == 732
    assert v2[:322] == v1  # v1 ids stay valid in v2
    assert v2[322:324] == ["[", "]"]
    assert len(set(v2)) == len(v2)


def test_groups():
    assert len(zh_phones()) == 26 + 39 * 5
    assert len(arpabet_phones()) == 71
    assert len(yue_phones()) == 379
    assert symbols("v1")[0] == "!" and PAD in symbols("v1")


def test_phone_to_id_and_back():
    table = phone_to_id("v2")
    assert table["_"] == symbols("v2").index("_")
    phones = ["n", "i2", "h", "ao3", ",", "HH", "AH0", "SP", "UNK"]
    ids = phones_to_ids(phones, "v2")
    assert ids_to_phones(ids, "v2") == phones
    # callers get copies, not the cached table
    table["n"] = -1
    assert phone_to_id("v2")["n"] != -1


def test_unknown_phone_is_named():
    with pytest.raises(UnknownPhoneError, match="'ZZ9'") as info:
        phones_to_ids(["a1", "ZZ9", "b", "ZZ9"], "v2")
    assert info.value.phones == ("ZZ9",)
    # Korean jamo exist only in v2
    with pytest.raises(UnknownPhoneError, match="ㄱ"):
        phones_to_ids(["ㄱ"], "v1")
    assert phones_to_ids(["ㄱ"], "v2") == [symbols("v2").index("ㄱ")]


def test_unknown_version():
    with pytest.raises(ValueError, match="v3"):
        symbols("v3")
