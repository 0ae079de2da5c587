"""Property tests (issue 3) for the pure pieces of garminsync.py, imported as a module:
file names are always plain names inside DEST, and adopting files from disk into the
manifest is idempotent and never loses an entry.
"""

from __future__ import annotations

import copy
import tempfile
from datetime import datetime
from pathlib import Path

from helpers import import_script
from hypothesis import example, given, settings
from hypothesis import strategies as st

garminsync = import_script()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
timestamps = st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S"))
activity_json = st.fixed_dictionaries(
    {},
    optional={
        "activityId": st.integers() | st.text() | st.none() | st.integers(1, 10**19).map(str),
        "startTimeLocal": timestamps | st.text() | st.none() | st.integers(),
        "startTimeGMT": timestamps | st.text() | st.none(),
        "beginTimestamp": st.integers() | st.floats(allow_nan=False) | st.none(),
        "activityName": st.text() | st.none() | st.integers(),
        "activityType": st.dictionaries(st.text(), json_values) | st.none() | st.text(),
        "manualActivity": json_values,
    },
)


@given(activity_json, st.sampled_from(garminsync.ORIGINAL_EXTENSIONS))
@example({"activityId": 10**20, "beginTimestamp": 0}, "fit")  # one digit past the pattern
@example({"activityId": "\u00b2", "beginTimestamp": 0}, "fit")  # a digit int() refuses
@settings(max_examples=400, deadline=None)
def test_any_activity_json_yields_a_plain_file_name_inside_dest(raw, ext):
    record = garminsync.activity_record(raw)
    if record is None:
        return
    name = garminsync.activity_filename(record, ext)
    dest = Path("/data/fit")
    assert "/" not in name and "\0" not in name and not name.startswith(".")
    assert (dest / name).parent == dest
    assert garminsync.FILE_PATTERN.fullmatch(name)


# start times as garminsync writes them (it rejects years before 1970 as malformed)
written = st.datetimes(min_value=datetime(1970, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%d %H:%M:%S")
)
entries = st.dictionaries(
    st.integers(1, 10**12).map(str),
    st.fixed_dictionaries(
        {
            "start_local": written,
            "status": st.sampled_from(garminsync.STATUSES),
            "file": st.none() | st.text(max_size=20),
            "gone_since": st.none() | st.just("2024-01-01T00:00:00Z"),
            "name": st.text(max_size=10),
        }
    ),
    max_size=12,
)
disk_files = st.dictionaries(
    st.integers(1, 10**12),
    st.tuples(written, st.sampled_from(garminsync.ORIGINAL_EXTENSIONS)),
    max_size=12,
)


@given(entries, disk_files)
@settings(max_examples=150, deadline=None)
def test_adopting_files_is_idempotent_and_never_loses_an_entry(known, on_disk):
    with tempfile.TemporaryDirectory() as directory:
        dest = Path(directory)
        for activity_id, (start, ext) in on_disk.items():
            record = {"id": activity_id, "start_local": start}
            (dest / garminsync.activity_filename(record, ext)).write_bytes(b"x")
        store = garminsync.ManifestStore(dest, writable=False)
        for key, entry in known.items():
            store.activities[key] = garminsync.new_entry({**entry, "id": int(key)})
        store.adopt_files_on_disk()
        once = copy.deepcopy(store.data)
        store.adopt_files_on_disk()
        assert store.data == once
        assert set(known) | {str(i) for i in on_disk} == set(store.activities)
        for key, entry in store.activities.items():
            assert (entry["status"] == "downloaded") == (int(key) in on_disk)


@given(st.dictionaries(st.text(), json_values | st.fixed_dictionaries({"id": st.integers()})))
@example({"\u00b2": {"id": 2}})  # a key str.isdigit() accepts and int() refuses
@settings(max_examples=300, deadline=None)
def test_any_manifest_entry_is_kept_clean_or_dropped_never_the_whole_manifest(activities):
    text = garminsync.json.dumps({"version": 1, "activities": activities})
    kept = garminsync.parse_manifest(text)["activities"]
    assert set(kept) <= set(activities)
    for key, entry in kept.items():
        assert entry["id"] == int(key) and entry["status"] in garminsync.STATUSES


@given(st.text())
@example("1_000")
@example("+7")
@example(" 42 ")
def test_a_text_activity_id_is_taken_only_when_it_is_plain_ascii_digits(text):
    record = garminsync.activity_record({"activityId": text, "beginTimestamp": 0})
    plain = text.strip()
    if plain.isascii() and plain.isdigit() and 0 < int(plain) < 10**20:
        assert record is not None and record["id"] == int(plain)
    else:
        assert record is None


# A manifest entry as garminsync writes it, then hand-edited: any field, the Strava part
# included, may hold any JSON value.
upload_states = st.fixed_dictionaries(
    {"status": st.sampled_from(garminsync.STRAVA_STATUSES) | json_values},
    optional={field: json_values for field in garminsync.STRAVA_UPLOAD if field != "status"},
)
edited_entries = st.fixed_dictionaries(
    {"start_local": written, "status": st.sampled_from(garminsync.STATUSES)},
    optional={
        **{f: json_values for f in garminsync.ENTRY if f not in ("id", "start_local", "status")},
        "strava": upload_states | json_values,
        "strava_legs": st.lists(upload_states | json_values, max_size=3) | json_values,
    },
)


@given(st.dictionaries(st.integers(1, 10**12).map(str), edited_entries, max_size=5))
@example({"7": {"start_local": "2024-01-01 07:00:00", "status": "failed",
                "strava": {"status": "failed", "attempts": "2"}}})  # fmt: skip
@example({"7": {"start_local": "2024-01-01 07:00:00", "status": "failed",
                "strava": {"status": "processing", "upload_id": "x"}}})  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_every_field_read_back_has_the_type_the_schema_gives(activities):
    for key, entry in activities.items():
        entry["id"] = int(key)
    text = garminsync.json.dumps({"version": 1, "activities": activities})
    kept = garminsync.parse_manifest(text)["activities"]
    assert set(kept) == set(activities)  # a wrong field costs that field, not the entry
    for entry in kept.values():
        assert set(entry) == set(garminsync.ENTRY)
        for field, (kind, _) in garminsync.ENTRY.items():
            assert entry[field] is None or type(entry[field]) in garminsync.EXACT_TYPES[kind], field
        uploads = [entry["strava"], *(entry["strava_legs"] or [])]
        for upload in filter(None, uploads):
            assert upload["status"] in garminsync.STRAVA_STATUSES
            for field, (kind, _) in garminsync.STRAVA_UPLOAD.items():
                assert (
                    upload[field] is None or type(upload[field]) in garminsync.EXACT_TYPES[kind]
                ), field


@given(st.dictionaries(st.integers(1, 10**12).map(str), edited_entries, max_size=5))
@settings(max_examples=300, deadline=None)
def test_an_entry_written_and_read_back_is_the_same_entry(activities):
    for key, entry in activities.items():
        entry["id"] = int(key)
    text = garminsync.json.dumps({"version": 1, "activities": activities})
    read = garminsync.parse_manifest(text)
    written = "".join(garminsync.manifest_text(read))  # unset fields left out
    assert garminsync.parse_manifest(written)["activities"] == read["activities"]
