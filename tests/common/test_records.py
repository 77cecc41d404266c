"""The item catalogue and the record model."""

from __future__ import annotations

import pytest

from common.items import (
    MINISTRY,
    MUNICIPALITY,
    catalogue,
    column_owner,
    columns_for,
    get_item,
    item_by_row,
    items_for,
)
from common.records import (
    Address,
    CardRef,
    MinistryNotice,
    MunicipalityNotice,
    Name,
    record_from_json,
)


def test_catalogue_covers_tables_4_1_1_and_4_2_1():
    ministry = {item.name_ja for item in items_for(MINISTRY)}
    for name in (
        "氏名",
        "出生の年月日",
        "男女の別",
        "住居地／住所",
        "国籍等",
        "在留資格",
        "在留期間等",
        "在留期間等の満了の日",
        "最終出国年月日",
        "中長期在留者である旨等",
        "在留カード等の番号",
        "事由発生年月日",
        "異動事由",
        "異動事実",
    ):
        assert name in ministry
    municipality = {item.name_ja for item in items_for(MUNICIPALITY)}
    for name in (
        "届出年月日",
        "処理年月日",
        "異動前の住居地／住所",
        "特別永住者証明書の交付年月日",
    ):
        assert name in municipality
    assert "中長期在留者である旨等" not in municipality


def test_spec_rows_map_to_items():
    assert item_by_row(MINISTRY)[35].item_id == "card_number"
    assert item_by_row(MUNICIPALITY)[32].item_id == "card_number"
    assert item_by_row(MUNICIPALITY)[34].item_id == "certificate_issue_date"
    assert item_by_row(MINISTRY)[6] is get_item("name")


def test_columns_are_unique_and_old_columns_follow_their_item():
    for direction in (MINISTRY, MUNICIPALITY):
        columns = columns_for(direction)
        assert len(columns) == len(set(columns))
        index = columns.index("name_kanji")
        assert columns[index + 1 : index + 4] == (
            "old_name_kind",
            "old_name_alphabet",
            "old_name_kanji",
        )
    assert "old_change_fact" not in columns_for(MINISTRY)  # event rows never carry old values
    assert "old_previous_address" not in columns_for(MUNICIPALITY)


def test_every_item_has_a_known_shape_and_column_owner():
    for item in catalogue():
        for direction in (MINISTRY, MUNICIPALITY):
            if item.spec_row(direction) is None:
                continue
            owners = column_owner(direction)
            assert all(owners[c] == (item, False) for c in item.columns)
            assert all(owners[c] == (item, True) for c in item.old_columns)


def test_typed_views_of_new_and_old_values():
    record = MinistryNotice(
        "M-1",
        "A",
        {
            "name_kind": "3",
            "name_alphabet": "WANG XIAOMING",
            "name_kanji": "王小明",
            "old_name_kind": "1",
            "old_name_alphabet": "WANG MING",
            "address_code": "131016",
            "address": "東京都千代田区霞が関一丁目1番1号",
            "card_kind": "1",
            "card_number": "AB12345678CD",
            "sex": "1",
        },
    )
    name = record.item("name")
    assert name.new == Name("3", "WANG XIAOMING", "王小明")
    assert name.old == Name("1", "WANG MING", None)
    assert record.item("address").new == Address("131016", "東京都千代田区霞が関一丁目1番1号")
    assert record.item("address").old is None  # ○ in most patterns: current value only
    assert record.item("card_number").new == CardRef("1", "AB12345678CD")
    assert record.item("sex").new == "1"
    assert record.item("birth_date").new is None
    assert set(record.items()) == {"name", "address", "card_number", "sex"}


def test_records_are_values_and_json_round_trips():
    record = MunicipalityNotice("C-1", "B", {"sex": "2", "address_code": "011002"})
    assert record == MunicipalityNotice("C-1", "B", {"sex": "2", "address_code": "011002"})
    assert record.direction == MUNICIPALITY and MinistryNotice.direction == MINISTRY
    assert record_from_json(MUNICIPALITY, record.to_json()) == record
    cleared = record.with_values(sex=None, name_kind="1")
    assert cleared.values == {"address_code": "011002", "name_kind": "1"}
    assert record.values == {"sex": "2", "address_code": "011002"}  # unchanged
    with pytest.raises(AttributeError):
        record.pattern = "C"  # type: ignore[misc]
