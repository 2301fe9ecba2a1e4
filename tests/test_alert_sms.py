"""SMS text and segment arithmetic (GSM-7 vs UCS-2), pure functions."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from sync_service.alerts.sms import AlertText, fold_to_gsm7, is_gsm7, segment_count

LINK = "https://www.namus.gov/MissingPersons/Case#/990001"


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # extension characters take two septets
        ("{" * 81, 2),
        ("Ж" * 70, 1),  # one non-GSM character makes the whole message UCS-2
        ("Ж" * 71, 2),
        ("Ж" * 134, 2),
        ("Ж" * 135, 3),
        ("😀" * 35, 1),  # beyond the BMP: two UTF-16 units each
        ("😀" * 36, 2),
        ("", 1),
    ],
)
def test_segment_count(text, segments):
    assert segment_count(text) == segments


def test_fold_keeps_gsm_letters_and_folds_the_rest():
    assert fold_to_gsm7("Renée Müller") == "Renée Müller"  # é and ü are GSM-7
    assert fold_to_gsm7("Łukasz Żółć") == "Lukasz Zolc"
    assert fold_to_gsm7("O’Brien – “Jo”") == 'O\'Brien - "Jo"'
    assert not is_gsm7(fold_to_gsm7("王秀英"))  # no GSM-7 form: stays, as UCS-2


def full(**changes) -> AlertText:
    fields = dict(
        name="Dana Example",
        case_label="NamUs MP990001",
        sex="F",
        age_now="41",
        age_missing="35",
        last_seen_date=date(2020, 7, 4),
        last_seen_place="Springfield, IL",
        seen_at=datetime(2026, 11, 29, 9, 12, tzinfo=UTC),
        seen_where="Gate camera, North trailhead",
        similarity=0.612,
        link=LINK,
    )
    return AlertText(**(fields | changes))


def test_full_text_reads_as_expected():
    assert full().render() == (
        "MISSING PERSON SEEN: Dana Example (F, 41 now, 35 when missing), NamUs MP990001. "
        "Last seen 2020-07-04 in Springfield, IL. Seen 2026-11-29 09:12 UTC at Gate camera, North trailhead. "
        f"Similarity 0.61. {LINK}"
    )


def test_long_fields_are_shortened_to_two_segments_and_the_link_survives():
    text = full(
        name="Maximiliana " * 12, last_seen_place="Unincorporated area " * 10, seen_where="Camera " * 10
    ).render()
    assert segment_count(text) == 2 and is_gsm7(text)
    assert text.endswith(LINK)
    assert "NamUs MP990001" in text and "Similarity 0.61" in text


def test_name_outside_gsm7_fits_two_segments_keeping_place_and_link():
    # UCS-2 halves the budget: lesser fields go first, and if even that is too long
    # the text falls back to GSM-7 without the name (the case label and link identify it).
    short = full(name="王秀英", seen_where="Gate").render()
    assert segment_count(short) <= 2 and "王秀英" in short and "at Gate." in short and short.endswith(LINK)

    long = full(name="王秀英", seen_where="Gate camera, North trailhead").render()
    assert segment_count(long) <= 2 and is_gsm7(long)
    assert "name in case file, NamUs MP990001" in long and "at Gate camera, North trailhead." in long
    assert long.endswith(LINK)

    cyrillic = full(name="Александра Константиновна Преображенская", seen_where="Камера у ворот").render()
    assert segment_count(cyrillic) <= 2
    assert "NamUs MP990001" in cyrillic and cyrillic.endswith(LINK)


def test_fallback_text_says_the_case_source_was_not_reached():
    text = full(
        sex="", age_now="", age_missing="", last_seen_date=None, last_seen_place="", details_fresh=False
    ).render()
    assert text == (
        "MISSING PERSON SEEN: Dana Example, NamUs MP990001. Seen 2026-11-29 09:12 UTC at Gate camera, "
        f"North trailhead. Similarity 0.61. (case source not reached: details from the gallery) {LINK}"
    )
    assert segment_count(text) == 2


def test_worst_case_still_fits():
    worst = full(
        name="字" * 200,
        case_label="NamUs " + "9" * 128,
        seen_where="場" * 140,
        last_seen_place="所" * 200,
        link="https://example.org/" + "x" * 400,
        details_fresh=False,
    )
    assert segment_count(worst.render()) <= 2
