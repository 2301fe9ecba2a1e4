"""Write a dev source server's data folder from made-up cases.

The folder holds each source's responses in their real JSON shapes (docs/ingest.md),
so the adapters parse here exactly what they parse in production:

    source.json                          {"source": "namus"}
    namus:    states.json, cases/{n}.json, images/{n}/{identityId}
    fbi:      items/{uid}.json, images/{uid}/{name}
    interpol: notices/{id}.json, images/{id}/{picture_id}

Absolute URLs inside the JSON use the placeholder ``{{BASE}}``, which the server
replaces with its own address. Only made-up people go in here: the demo uses
package sample images and tests place photos from ../shared/data/faces into a
temporary folder at test time.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from edge_app.gallery.bundle import atomic_write_bytes
from sync_service.sources.namus import NAMUS_STATES  # the 55 entries of GET .../States (one definition)

BASE = "{{BASE}}"
DEFAULT_MODIFIED = "2026-01-15T10:00:00.000"

STATE_CODES = dict(NAMUS_STATES)


@dataclass
class FixturePhoto:
    """A photo file (or raw bytes) attached to a made-up case."""

    data: bytes | Path
    category: str = "FacialCaseId"  # NamUs category name
    mime_type: str = "image/jpg"  # what the source declares (NamUs says image/jpg, image/pjpeg, image/x-png)
    photo_id: int | str | None = None  # default: derived from the case id and position

    def read(self) -> bytes:
        return self.data if isinstance(self.data, bytes) else Path(self.data).read_bytes()


@dataclass
class FixtureCase:
    """A made-up missing person, written out in each source's real response shape."""

    case_id: int | str  # NamUs number (4351), FBI uid, Interpol notice id ("2026-12345")
    first_name: str
    last_name: str
    sex: str = "Female"  # Male | Female | Unsure
    age_now: int | None = None
    age_when_missing: int | None = None
    last_seen_date: str | None = "2024-05-01"  # YYYY-MM-DD
    city: str = "Springfield"
    state: str = "Illinois"  # a NamUs state name
    modified: str = DEFAULT_MODIFIED
    resolved: bool = False
    photos: list[FixturePhoto | Path | bytes] = field(default_factory=list)
    namus_shape: str = "2025"  # "2025" (address object) or "flat" (older sighting.city/state)
    fbi_subject: str = "ViCAP Missing Persons"


def write_fixture_cases(
    data_dir: str | os.PathLike[str], source: str, cases: list[FixtureCase], states: list[str] | None = None
) -> Path:
    """Write (or overwrite) ``cases`` into a dev-server data folder for ``source``.

    NamUs only: ``states`` limits the States list (default: all 55), which keeps tests short.
    """
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "source.json"
    if marker.exists() and json.loads(marker.read_text()).get("source") != source:
        raise ValueError(f"{root} already holds data for another source: {marker.read_text()}")
    _write_json(marker, {"source": source})
    writer = {"namus": _write_namus, "fbi": _write_fbi, "interpol": _write_interpol}.get(source)
    if writer is None:
        raise ValueError(f"unknown source {source!r}")
    if source == "namus" and (states is not None or not (root / "states.json").exists()):
        rows = [(n, c) for n, c in NAMUS_STATES if states is None or n in states]
        _write_json(root / "states.json", [{"id": i + 1, "name": n, "displayName": c} for i, (n, c) in enumerate(rows)])
    for case in cases:
        writer(root, case)
    return root


def remove_fixture_case(data_dir: str | os.PathLike[str], source: str, case_id: int | str) -> None:
    """Take a case off the dev server (as if the source unpublished it)."""
    root = Path(data_dir)
    folder = {"namus": "cases", "fbi": "items", "interpol": "notices"}[source]
    (root / folder / f"{case_id}.json").unlink(missing_ok=True)
    shutil.rmtree(root / "images" / str(case_id), ignore_errors=True)


def _photos(case: FixtureCase) -> list[FixturePhoto]:
    return [p if isinstance(p, FixturePhoto) else FixturePhoto(p) for p in case.photos]


def _photo_id(case: FixtureCase, photo: FixturePhoto, index: int, base: int) -> str:
    if photo.photo_id is not None:
        return str(photo.photo_id)
    return str(base + index) if isinstance(case.case_id, int) else f"{index + 1}"


def _write_image(root: Path, case_id: object, photo_id: str, photo: FixturePhoto) -> None:
    folder = root / "images" / str(case_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / photo_id).write_bytes(photo.read())
    _write_json(folder / f"{photo_id}.meta.json", {"mime_type": photo.mime_type})


def _lookup(id_: int, name: str) -> dict:
    return {"id": id_, "name": name, "localizedName": name}


def _write_namus(root: Path, case: FixtureCase) -> None:
    number = int(case.case_id)
    api = f"/api/CaseSets/NamUs/MissingPersons/Cases/{number}"
    code = STATE_CODES.get(case.state, case.state[:2].upper())
    images = []
    for index, photo in enumerate(_photos(case)):
        identity = _photo_id(case, photo, index, number * 10)
        _write_image(root, number, identity, photo)
        file_info = {
            "mimeType": photo.mime_type,
            "height": 500,
            "width": 400,
            "href": f"{api}/Images/{identity}/Original",
        }
        if case.namus_shape == "2025":
            file_info["storageKey"] = f"{number:08x}{identity}"
        images.append(
            {
                "id": int(identity) + 1000 if identity.isdigit() else identity,
                "identityId": int(identity) if identity.isdigit() else identity,
                "category": {"id": 1, "name": photo.category, "localizedName": photo.category, "ordinal": 10},
                "isPublic": True,
                "createdDateTime": case.modified,
                "files": {
                    "original": file_info,
                    "thumbnail": {
                        **file_info,
                        "height": 120,
                        "width": 96,
                        "href": f"{api}/Images/{identity}/Thumbnail",
                    },
                },
                "hrefDownload": f"{api}/Images/{identity}/Download",
            }
        )
    if case.namus_shape == "flat":
        sighting = {"id": number, "date": case.last_seen_date, "city": case.city, "state": case.state,
                    "stateDisplayName": code, "county": "Made-up County", "countyDisplayName": "Made-up"}  # fmt: skip
    else:
        sighting = {"id": number, "date": case.last_seen_date,
                    "address": {"city": case.city, "state": {"id": 1, "name": case.state, "displayName": code},
                                "stateId": 0, "countyId": 0},
                    "publicGeolocation": {"coordinates": {"lat": 0.0, "lon": 0.0},
                                          "formattedAddress": f"{case.city}, {code}, USA"}}  # fmt: skip
    body = {
        "id": number,
        "idFormatted": f"MP{number}",
        "publicationStatus": _lookup(1, "Published"),
        "createdDateTime": case.modified,
        "modifiedDateTime": case.modified,
        "caseIsResolved": case.resolved,
        "subjectIdentification": {
            "id": number,
            "firstName": case.first_name,
            "lastName": case.last_name,
            "currentMinAge": case.age_now,
            "currentMaxAge": case.age_now,
            "computedMissingMinAge": case.age_when_missing,
            "computedMissingMaxAge": case.age_when_missing,
        },
        "subjectDescription": {"id": number, "sex": _lookup(1 if case.sex == "Male" else 2, case.sex)},
        "sighting": sighting,
        "images": images,
        "hrefDefaultImageThumbnail": f"{api}/Images/Default/Thumbnail",
        "hrefDefaultImagePoster": f"{api}/Images/Default/Poster",
    }
    _write_json(root / "cases" / f"{number}.json", body)


def _fbi_date(value: str | None) -> str:
    return datetime.strptime(value, "%Y-%m-%d").strftime("%B %-d, %Y") if value else ""


def _write_fbi(root: Path, case: FixtureCase) -> None:
    uid = str(case.case_id)
    page = f"{BASE}/wanted/vicap/missing-persons/{uid}"
    images = []
    for index, photo in enumerate(_photos(case)):
        name = _photo_id(case, photo, index, 0)
        _write_image(root, uid, name, photo)
        url = f"{BASE}/images/{uid}/{name}"
        images.append({"original": url, "large": url + "/large", "thumb": url + "/thumb", "caption": None})
    title = f"{case.first_name} {case.last_name}".upper()
    modified = case.modified if "+" in case.modified else case.modified[:19] + "+00:00"
    item = {
        "uid": uid,
        "@id": f"{BASE}/@wanted-person/{uid}",
        "title": f"{title} - {case.city.upper()}, {case.state.upper()}",
        "description": f"{_fbi_date(case.last_seen_date)}\r\n{case.city}, {case.state}",
        "subjects": [case.fbi_subject],
        "person_classification": "Main",
        "poster_classification": "missing" if "issing" in case.fbi_subject else "default",
        "status": "recovered" if case.resolved else "na",
        "sex": case.sex if case.sex in ("Male", "Female") else None,
        "age_min": case.age_when_missing,
        "age_max": case.age_when_missing,
        "age_range": f"{case.age_when_missing} (at time of disappearance)" if case.age_when_missing else None,
        "dates_of_birth_used": None,
        "images": images,
        "url": page,
        "path": f"/wanted/vicap/missing-persons/{uid}",
        "publication": case.modified[:19],
        "modified": modified,
        "field_offices": None,
        "files": [],
        "aliases": None,
    }
    _write_json(root / "items" / f"{uid}.json", item)


def _write_interpol(root: Path, case: FixtureCase) -> None:
    notice = str(case.case_id)
    if case.resolved:  # Interpol withdraws a notice once the person is found
        remove_fixture_case(root, "interpol", notice)
        return
    entity = notice.replace("-", "/", 1)
    links = {
        "self": {"href": f"{BASE}/notices/v1/yellow/{notice}"},
        "images": {"href": f"{BASE}/notices/v1/yellow/{notice}/images"},
    }
    pictures = []
    for index, photo in enumerate(_photos(case)):
        picture = _photo_id(case, photo, index, 0)
        _write_image(root, notice, picture, photo)
        pictures.append(picture)
    if pictures:
        links["thumbnail"] = {"href": f"{BASE}/notices/v1/yellow/{notice}/images/{pictures[0]}"}
    born = None
    if case.age_now is not None:
        born = f"{date.today().year - case.age_now}/01/01"
    detail = {
        "forename": case.first_name.upper(),
        "name": case.last_name.upper(),
        "date_of_birth": born,
        "sex_id": {"Male": "M", "Female": "F"}.get(case.sex, "U"),
        "nationalities": ["US"],
        "date_of_event": case.last_seen_date.replace("-", "/") if case.last_seen_date else None,
        "place": case.city,
        "country": "US",
        "height": 0,
        "weight": 0,
        "entity_id": entity,
        "_links": links,
        "_pictures": pictures,  # dev-server bookkeeping (not served): the images list
    }
    _write_json(root / "notices" / f"{notice}.json", detail)


def _write_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1).encode())
