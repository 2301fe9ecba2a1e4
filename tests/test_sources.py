"""Source adapters' parsers: every real response in ../shared/data/sources, plus our
own made-up fixtures (tests/fixtures/sources) whose every field is checked."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from sync_service.sources.fbi import is_missing_person, parse_item
from sync_service.sources.interpol import notice_id, parse_list_page, parse_notice
from sync_service.sources.namus import PORTRAIT_CATEGORIES, case_number, parse_case
from sync_service.sources.records import AgeRange, MalformedCase, PersonRecord

FIXTURES = Path(__file__).parent / "fixtures" / "sources"


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


# --- real responses -----------------------------------------------------------------------


def test_every_real_namus_missing_person_case_parses(sources_dir):
    cases = json.loads((sources_dir / "namus_MissingPersons_VirginIslands_2025-09-20.json").read_text())
    assert len(cases) == 16
    photos = 0
    for key, body in cases.items():
        record = parse_case(body)
        assert record.case_id == f"MP{key}"
        assert record.name and record.sex in ("male", "female")
        assert record.last_seen_place and record.last_seen_place.endswith(", VI")
        assert record.modified is not None and record.modified.tzinfo is not None
        assert record.age_now is not None and record.age_when_missing is not None
        assert record.age_when_missing.max <= record.age_now.max
        for photo in record.photos:
            assert photo.category in PORTRAIT_CATEGORIES
            assert (
                photo.url
                == f"https://www.namus.gov/api/CaseSets/NamUs/MissingPersons/Cases/{key}/Images/{photo.photo_id}/Original"
            )
        photos += len(record.photos)
        all_public = parse_case(body, categories=None).photos
        assert len(all_public) == len([i for i in body["images"] if i.get("isPublic", True)])
    # The 16 cases hold 18 public images; one is category "Other" (not a portrait).
    assert photos == 17


def test_real_namus_png_and_pjpeg_declared_types_are_kept_as_declared(sources_dir):
    record = parse_case(json.loads((sources_dir / "namus_case_MP71320_pretty.json").read_text()))
    assert record.case_id == "MP71320"
    assert [p.mime_type for p in record.photos] == ["image/x-png"]


def test_real_older_flat_sighting_shape_parses(sources_dir):
    record = parse_case(json.loads((sources_dir / "namus_case_fixture_MP9564_meddulla-facematch.json").read_text()))
    assert record.case_id == "MP9564"
    assert record.last_seen_place == "San Ysidro, CA"
    assert record.last_seen_date == date(1999, 8, 4)
    assert len(record.photos) == 1


def test_real_unidentified_person_is_refused_not_misread(sources_dir):
    cases = json.loads((sources_dir / "namus_UnidentifiedPersons_VirginIslands_2025-09-20.json").read_text())
    for key, body in cases.items():
        with pytest.raises(MalformedCase, match=f"MP{key}.*subjectIdentification"):
            parse_case(body)


def test_real_fbi_page_yields_exactly_the_missing_persons(sources_dir):
    page = json.loads((sources_dir / "fbi_wanted_list_page1_2021-07.json").read_text())
    records = [parse_item(item) for item in page["items"]]  # every item parses
    assert len(records) == 20
    missing = [parse_item(i) for i in page["items"] if is_missing_person(i)]
    # One ViCAP Missing Persons and one Kidnappings and Missing Persons item (PROVENANCE.md);
    # ViCAP *Unidentified* Persons are remains, not missing persons.
    assert [r.name for r in missing] == ["Randy Stewart Doran", "Cydney Mizell"]
    doran = missing[0]
    assert doran.age_when_missing == AgeRange(min=22, max=22)
    assert doran.last_seen_date == date(1978, 4, 1)
    assert doran.last_seen_place == "New Orleans, Louisiana"
    assert len(doran.photos) == 2 and all(p.url.startswith("https://www.fbi.gov/") for p in doran.photos)
    assert len({p.photo_id for r in records for p in r.photos}) == sum(len(r.photos) for r in records)


def test_real_interpol_list_parses(sources_dir):
    page = json.loads((sources_dir / "interpol_red_list_2021-12-11.json").read_text())
    total, summaries = parse_list_page(page)
    assert total == 7527 and len(summaries) == 20
    assert summaries[0].case_id == "2021-75051"
    for item in page["_embedded"]["notices"]:
        record = parse_notice(item)
        assert record.name == record.name.title()
        assert len(record.photos) == (1 if "thumbnail" in item["_links"] else 0)


# --- made-up fixtures: exact mapping -----------------------------------------------------------


def test_namus_2025_shape_maps_every_field():
    record = parse_case(load("namus_case_2025.json"), base_url="http://dev:1/")
    assert record == PersonRecord(
        source="namus",
        case_id="MP990001",
        name="Jordan Q Example",
        sex="female",
        age_now=AgeRange(min=31, max=32),
        age_when_missing=AgeRange(min=24, max=24),
        last_seen_date=date(2018, 9, 14),
        last_seen_place="Fictional Falls, VT",
        modified=datetime(2025, 6, 30, 8, 15, 42, 500000, tzinfo=UTC),
        resolved=False,
        photos=record.photos,
        url="http://dev:1/MissingPersons/Case#/990001",
    )
    # "Other" (a tattoo) is not a portrait and the non-public photo is left out.
    assert [(p.photo_id, p.category, p.mime_type) for p in record.photos] == [
        ("4001", "FacialCaseId", "image/pjpeg"),
        ("4003", "AgeProgression", "image/jpg"),
    ]
    assert record.photos[0].url == "http://dev:1/api/CaseSets/NamUs/MissingPersons/Cases/990001/Images/4001/Original"


def test_namus_flat_shape_maps_place_and_ages():
    record = parse_case(load("namus_case_flat_2019.json"))
    assert (record.name, record.sex, record.last_seen_place) == ("Casey Sample", "male", "Nowhere Junction, NM")
    assert record.age_now == AgeRange(min=50, max=52)


def test_namus_photo_href_is_built_from_identity_id_when_absent():
    body = load("namus_case_2025.json")
    del body["images"][0]["files"]
    assert parse_case(body).photos[0].url.endswith("/Cases/990001/Images/4001/Original")


def test_namus_resolved_and_unpublished_cases_are_resolved():
    body = load("namus_case_2025.json")
    assert parse_case({**body, "caseIsResolved": True}).resolved
    assert parse_case({**body, "publicationStatus": {"name": "Unpublished"}}).resolved


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "no numeric 'id'"),
        ({"subjectIdentification": None}, "subjectIdentification"),
        ({"subjectIdentification": {"firstName": " ", "lastName": ""}}, "no name"),
        ({"images": {"not": "a list"}}, "'images' is dict"),
    ],
)
def test_malformed_namus_case_names_the_case_and_the_problem(change, message):
    with pytest.raises(MalformedCase, match=message) as error:
        parse_case({**load("namus_case_2025.json"), **change})
    assert error.value.case_id in ("MP990001", "?", "MP990001")


def test_namus_bad_optional_fields_are_dropped_not_fatal():
    body = load("namus_case_2025.json")
    body["sighting"] = {"date": "31/12/2020", "address": "not an object"}
    body["modifiedDateTime"] = "yesterday"
    body["images"].append("junk")
    body["subjectIdentification"] |= {"currentMinAge": 60, "currentMaxAge": 20}  # a person is not lost over an age
    record = parse_case(body)
    assert record.last_seen_date is None and record.modified is None and len(record.photos) == 2
    assert record.age_now is None and record.name


def test_namus_case_numbers():
    assert case_number("MP4351") == case_number("mp4351") == case_number(4351) == 4351
    with pytest.raises(ValueError, match="not a NamUs"):
        case_number("UP4351")
    with pytest.raises(ValueError):
        case_number("../../etc")


def test_fbi_fixture_filters_and_maps():
    items = load("fbi_list_page.json")["items"]
    assert [is_missing_person(i) for i in items] == [True, True, False]
    alex, robin = parse_item(items[0]), parse_item(items[1])
    assert (alex.name, alex.sex, alex.last_seen_place) == ("Alex Placeholder", "male", "Madeup City, Oregon")
    assert alex.modified == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert robin.last_seen_date == date(2008, 1, 1)  # "January 2008": month precision
    assert robin.age_when_missing == AgeRange(min=17, max=17)  # born 1990-02-12
    assert not robin.photos
    assert parse_item({**items[0], "status": "recovered"}).resolved


def test_fbi_malformed_item():
    with pytest.raises(MalformedCase, match="uid"):
        parse_item({"uid": "../x", "title": "X"})
    with pytest.raises(MalformedCase, match="title"):
        parse_item({"uid": "abc"})


def test_interpol_fixture_maps_detail_and_ages():
    notice = parse_notice(load("interpol_yellow_notice.json"), pictures=[])
    assert notice.case_id == "2024-900001" and notice.name == "Morgan Inventa" and notice.sex == "female"
    assert notice.last_seen_date == date(2024, 2, 29) and notice.last_seen_place == "Marseille, FR"
    assert notice.age_when_missing == AgeRange(min=14, max=14)
    total, summaries = parse_list_page(load("interpol_yellow_list.json"))
    assert total == 2 and [s.case_id for s in summaries] == ["2024-900001", "2023-900002"]
    year_only = parse_notice(load("interpol_yellow_list.json")["_embedded"]["notices"][1])
    assert year_only.age_now.max - year_only.age_now.min == 1  # birth year only: a range


def test_interpol_ids_and_malformed():
    assert notice_id("2021/75051") == "2021-75051"
    with pytest.raises(ValueError):
        notice_id("2021/../x")
    with pytest.raises(MalformedCase, match="forename"):
        parse_notice({"entity_id": "2021/1"})
    with pytest.raises(ValueError, match="notices list"):
        parse_list_page({"total": 1})


# --- the other real references: the NamUs state list and the Interpol OpenAPI examples -----


def test_dev_server_states_are_the_real_namus_states(sources_dir):
    import csv

    from sync_service.dev_servers.fixtures import NAMUS_STATES

    with open(sources_dir / "namus_MissingPersons_summary_2025-09-20.csv", newline="") as file:
        real = [row["state"] for row in csv.DictReader(file)]
    assert len(real) == 55 and sorted(real) == sorted(name for name, _ in NAMUS_STATES)


def example_of(schema: dict):
    """An instance built from an OpenAPI schema's ``example`` values."""
    if "example" in schema:
        return schema["example"]
    if schema.get("type") == "array":
        return [example_of(schema.get("items", {}))]
    if "properties" in schema:
        return {name: example_of(sub or {}) for name, sub in schema["properties"].items()}
    return None


def test_interpol_openapi_yellow_examples_parse(sources_dir):
    import yaml

    from sync_service.sources.interpol import parse_images

    schemas = yaml.safe_load((sources_dir / "interpol_openapi_bundesAPI.yaml").read_text())["components"]["schemas"]
    detail = example_of(schemas["YellowNoticeDetail"])
    pictures = parse_images(example_of(schemas["YellowNoticeDetailImages"]), "https://ws-public.interpol.int/x")
    assert [(p.photo_id, p.url) for p in pictures] == [
        ("59410257", "https://ws-public.interpol.int/notices/v1/yellow/2014-5590/images/59410257")
    ]
    record = parse_notice(detail, pictures)
    assert (record.case_id, record.name, record.sex) == ("2022-9888", "Max Max", "female")
    assert record.last_seen_date == date(2021, 2, 1) and record.last_seen_place == "Karlsruhe, DE"
    assert record.age_when_missing == AgeRange(min=62, max=62)  # born 1958/11/05


def test_namus_uncategorised_photo_is_kept():
    body = load("namus_case_2025.json")
    del body["images"][1]["category"]  # the "Other" one, now without a category
    assert [p.photo_id for p in parse_case(body).photos] == ["4001", "4002", "4003"]


def test_case_numbers_from_the_real_website_export_are_understood(sources_dir):
    import csv

    path = sources_dir / "namus_website_csv_export_missing_f_head20_allisonhorst.csv"
    with open(path, newline="") as file:
        numbers = [row["Case Number"] for row in csv.DictReader(file)]
    assert len(numbers) == 20
    assert all(f"MP{case_number(n)}" == n for n in numbers)  # the ids the original project fed to Cases/{id}
