"""The Dutch catalog is complete and up to date with the code and templates."""

from __future__ import annotations

from client.messages import extract, read, untranslated


def test_every_message_has_a_dutch_translation() -> None:
    assert untranslated(read("nl")) == []


def test_the_catalog_holds_exactly_the_messages_in_use() -> None:
    # A message added to a template or the code (or removed) without updating the catalog:
    # run `python -m client.messages`, then translate what it lists.
    in_use = {message.id for message in extract() if message.id}
    in_catalog = {message.id for message in read("nl") if message.id}
    assert in_use - in_catalog == set(), "not in the catalog"
    assert in_catalog - in_use == set(), "no longer used"


def test_the_translation_keeps_every_placeholder() -> None:
    for message in read("nl"):
        if message.id and "%(" in str(message.id):
            placeholders = sorted(p for p in str(message.id).split("%(")[1:])
            assert sorted(p for p in str(message.string).split("%(")[1:]) == placeholders
