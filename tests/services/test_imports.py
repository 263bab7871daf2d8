"""Tabular import (services/imports.py) through `POST /api/jobs/import`: CSV and JSONL, with
and without a template; every bad row named with nothing written; files that cannot be read."""

import json
import zlib
from typing import Any

import httpx
import pytest
from sqlmodel import func, select

from control_plane.models import Dispatch, Job, Output
from tests.conftest import png_bytes
from tests.fakes.api import Api


def _import(
    api: Api,
    group_id: str,
    content: str | bytes,
    filename: str = "rows.csv",
    template: str | None = None,
    config: dict[str, Any] | None = None,
) -> httpx.Response:
    data = {"group_id": group_id}
    if template is not None:
        data["template"] = template
    if config is not None:
        data["config"] = json.dumps(config)
    body = content.encode() if isinstance(content, str) else content
    return api.client.post(
        "/api/jobs/import", data=data, files={"file": (filename, body, "text/plain")}
    )


def _rows(api: Api) -> tuple[int, int, int]:
    with api.session() as session:
        return tuple(  # type: ignore[return-value]
            session.exec(select(func.count()).select_from(table)).one()
            for table in (Job, Output, Dispatch)
        )


def _uploads(api: Api, group_id: str, names: list[str]) -> list[str]:
    # distinct bytes for every file (the group would answer a duplicate with its first upload)
    files = [
        (name, png_bytes(40 + i, 30, (i * 40 % 256, 90, zlib.crc32(name.encode()) % 256)))
        for i, name in enumerate(names)
    ]
    answer = api.upload(group_id, files)
    assert answer.status_code == 201, answer.text
    return [image["id"] for image in answer.json()["images"]]


def test_a_csv_with_a_template_becomes_one_job_with_per_row_settings(api: Api) -> None:
    group_id = api.group()
    cat, dog = _uploads(api, group_id, ["cat.png", "dog.png"])
    csv_text = (
        "id,animal,colour,image,count,seed,aspect_ratio,negative_prompt\n"
        f"first,cat,red,cat.png,2,500,16:9,blurry\n"
        f",dog,blue,{dog},,,,\n"
        'third,bird,"green, bright",,1,7,,\n'
    )
    template = "a {{ colour }} {{ animal }}{% if image %}, from the photo{% endif %}"
    answer = _import(
        api,
        group_id,
        csv_text,
        template=template,
        config={"seed": 1000, "outputs_per_image": 3, "negative_prompt": "text"},
    )
    assert answer.status_code == 201, answer.text
    [job] = answer.json()["jobs"]
    assert job["mode"] == "import" and job["prompt"] == template
    assert job["progress"]["total"] == 2 + 3 + 1
    assert job["config"]["outputs_per_image"] == 3 and job["config"]["rows"] == 3
    outputs = api.outputs(job["id"])
    assert [(o.prompt, o.prompt_id, o.reference_ids, o.seed) for o in outputs] == [
        ("a red cat, from the photo", "first", [cat], 500),
        ("a red cat, from the photo", "first", [cat], 501),
        ("a blue dog, from the photo", "row-2", [dog], 1002),
        ("a blue dog, from the photo", "row-2", [dog], 1003),
        ("a blue dog, from the photo", "row-2", [dog], 1004),
        ("a green, bright bird", "third", [], 7),
    ]
    model = "gemini-2.5-flash-image"
    assert outputs[0].params == {
        "model": model,
        "aspect_ratio": "16:9",
        "image_size": "1K",
        "negative_prompt": "blurry",
    }
    assert outputs[2].params == {
        **outputs[0].params,
        "aspect_ratio": "1:1",
        "negative_prompt": "text",
    }
    api.drain()
    sent = {item["output_id"]: item for body in api.run_bodies for item in body["input"]["items"]}
    assert sent[outputs[0].id]["params"] == {**outputs[0].params, "seed": 500}
    assert sent[outputs[5].id]["reference_uris"] == []  # text to image
    assert _rows(api)[:2] == (1, 6)


def test_jsonl_with_a_template_and_permutations(api: Api) -> None:
    group_id = api.group()
    [cat] = _uploads(api, group_id, ["cat.png"])
    jsonl = "\n".join(
        json.dumps(row)
        for row in [
            {"id": 7, "subject": "cat", "image": "cat.png", "styles": ["oil", "ink"]},
            {"subject": "fox", "image": None, "styles": ["pencil"], "count": "2"},
        ]
    )
    template = "{{ subject }} in {% raw %}{{% endraw %}{{ styles | join(', ') }}} style"
    answer = _import(api, group_id, jsonl + "\n\n", filename="rows.jsonl", template=template)
    assert answer.status_code == 201, answer.text
    outputs = api.outputs(answer.json()["jobs"][0]["id"])
    assert [(o.prompt, o.prompt_id, o.reference_ids) for o in outputs] == [
        ("cat in oil style", "7", [cat]),
        ("cat in ink style", "7", [cat]),
        ("fox in pencil style", "row-2", []),
        ("fox in pencil style", "row-2", []),
    ]


def test_a_prompt_column_without_a_template_and_the_format_by_content(api: Api) -> None:
    group_id = api.group()
    csv_answer = _import(
        api, group_id, 'prompt\n"a {red, blue} bird"\nplain\n', filename="data", config={"seed": 0}
    )
    assert csv_answer.status_code == 201, csv_answer.text
    [job] = csv_answer.json()["jobs"]
    assert job["prompt"] == "import of data (2 rows)"
    assert [(o.prompt, o.seed) for o in api.outputs(job["id"])] == [
        ("a red bird", 0),
        ("a blue bird", 1),
        ("plain", 2),
    ]
    jsonl_answer = _import(api, group_id, '{"prompt": "p", "id": "x"}\n', filename="upload")
    assert jsonl_answer.status_code == 201, jsonl_answer.text
    [output] = api.outputs(jsonl_answer.json()["jobs"][0]["id"])
    assert (output.prompt, output.prompt_id) == ("p", "x")
    excel = _import(api, group_id, "\ufeffprompt\r\nfrom Excel\r\n".encode())  # BOM, CRLF
    assert excel.status_code == 201, excel.text
    assert [o.prompt for o in api.outputs(excel.json()["jobs"][0]["id"])] == ["from Excel"]


def test_every_bad_row_is_named_and_nothing_is_written(api: Api) -> None:
    group_id = api.group()
    _uploads(api, group_id, ["Cat.png"])
    csv_text = (
        "prompt,image,seed,count,aspect_ratio,image_size,id\n"
        "fine,,,,,,\n"
        "cat,cat.png,,,,,\n"  # filenames match exactly, on MySQL too
        "bird,,-1,9,,,\n"
        "dog,,,,1:8,,\n"
        "fish,,,,,4K,\n"
        "a {b,,\n"
        ",,,,,,\n"
        "fine,,,,,,,extra\n"
        f"fine,img_{'0' * 26},,,,,\n"
        f"long,,,,,,{'i' * 201}\n"
    )
    answer = _import(api, group_id, csv_text)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["detail"] == (
        "9 rows have errors; nothing was imported "
        "(rows are numbered from 1, counting data rows only: not a CSV's header)"
    )
    assert body["error_count"] == 11
    problems = {(e["row"], e["column"]): e["message"] for e in body["errors"]}
    assert problems == {
        (2, "image"): f"no upload named cat.png in group {group_id}",
        (3, "seed"): "must be a whole number from 0 to 2,147,483,647",
        (3, "count"): "must be a whole number from 1 to 8",
        (4, "aspect_ratio"): problems[(4, "aspect_ratio")],
        (5, "image_size"): problems[(5, "image_size")],
        (6, "prompt"): problems[(6, "prompt")],
        (6, None): "the row has 3 fields; the header has 7",
        (7, "prompt"): "the prompt is empty",
        (8, None): "the row has 8 fields; the header has 7 (put a field that holds commas "
        'in double quotes: "a {red, blue} bird")',
        (9, "image"): f"no upload img_{'0' * 26} in group {group_id}",
        (10, "id"): "201 characters; the limit is 200",
    }
    assert "does not support aspect_ratio '1:8'" in problems[(4, "aspect_ratio")]
    assert "does not support image_size '4K'" in problems[(5, "image_size")]
    assert "never closed" in problems[(6, "prompt")]
    assert [e["row"] for e in body["errors"]] == sorted(e["row"] for e in body["errors"])
    assert _rows(api) == (0, 0, 0)


def test_template_errors_are_row_errors(api: Api) -> None:
    group_id = api.group()
    answer = _import(
        api,
        group_id,
        "animal,colour\ncat,red\ndog,\nbird,blue\n",
        template="{{ colour | upper }} {{ animal }} {{ size }}{{ 1 // (colour | length) }}",
    )
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert errors[0] == {
        "row": 1,
        "column": "template",
        "message": "'size' is undefined: the row has no such column",
    }
    assert [e["row"] for e in errors] == [1, 2, 3]
    unsafe = _import(api, group_id, "a\n1\n", template="{{ a.__class__.__mro__ }}")
    assert unsafe.status_code == 422
    assert unsafe.json()["errors"][0]["column"] == "template"
    syntax = _import(api, group_id, "a\n1\n", template="{{ a ")
    assert syntax.status_code == 422
    assert syntax.json()["detail"].startswith("template: line 1: ")
    assert _rows(api) == (0, 0, 0)


def test_the_list_of_problems_is_bounded_but_counted(api: Api) -> None:
    group_id = api.group()
    answer = _import(api, group_id, "prompt,seed\n" + "p,x\n" * 150)
    assert answer.status_code == 422
    body = answer.json()
    assert len(body["errors"]) == 100 and body["error_count"] == 150
    assert body["detail"].startswith("150 rows have errors; nothing was imported")


def test_a_filename_several_uploads_share_needs_the_id(api: Api) -> None:
    group_id = api.group()
    first, second = _uploads(api, group_id, ["same.png", "same.png"])
    other_group = api.group("other")
    [elsewhere] = _uploads(api, other_group, ["mine.png"])
    ambiguous = _import(api, group_id, f"prompt,image\np,same.png\np,{elsewhere}\np,mine.png\n")
    assert ambiguous.status_code == 422
    assert ambiguous.json()["errors"] == [
        {
            "row": 1,
            "column": "image",
            "message": f"2 uploads of group {group_id} are named same.png; use the id of the "
            f"one you mean instead: {', '.join(sorted([first, second]))}",
        },
        {"row": 2, "column": "image", "message": f"no upload {elsewhere} in group {group_id}"},
        {"row": 3, "column": "image", "message": f"no upload named mine.png in group {group_id}"},
    ]
    [unique] = _uploads(api, group_id, ["unique.png"])
    by_id = _import(api, group_id, f"prompt,image\np,{second}\np,photos/unique.png\n")
    assert by_id.status_code == 201, by_id.text
    outputs = api.outputs(by_id.json()["jobs"][0]["id"])
    assert [o.reference_ids for o in outputs] == [[second], [unique]]  # as uploads keep names


@pytest.mark.parametrize(
    ("content", "filename", "template", "status", "needle"),
    [
        (b"prompt\n\xff\xfe bad\n", "rows.csv", None, 422, "rows.csv is not UTF-8 text (byte 0xff"),
        (b"\xef\xbb\xbfprompt\n\xe9t\xe9\n", "r.csv", None, 422, "(byte 0xe9 at offset 10)"),
        (b"", "rows.csv", None, 422, "rows.csv is empty"),
        (b"  \n\n", "rows.jsonl", None, 422, "rows.jsonl is empty"),
        (b"a red bird\nblue fish\n", "rows.csv", None, 422, "(read as CSV) has no prompt column"),
        (b"prompt\n", "rows.csv", None, 422, "rows.csv (read as CSV) has no rows, only a header"),
        (b"prompt,prompt\np,q\n", "rows.csv", None, 422, "names a column more than once: prompt"),
        (b"prompt,\np,q\n", "rows.csv", None, 422, "has no name for column 2"),
        (
            b'{"prompt": "p"}\n["p"]\n',
            "rows.jsonl",
            None,
            422,
            "line 2 of rows.jsonl (read as JSONL) is a JSON array, not an object",
        ),
        (
            b'{"prompt": "p"}\n{"prompt": \n',
            "rows.jsonl",
            None,
            422,
            "line 2 of rows.jsonl (read as JSONL) is not JSON",
        ),
        (b'{"prompt": "p"}\n', "rows.jsonl", "{{ a ", 422, "template: line 1"),
        (b'{"prompt": "p"}\n', "rows.jsonl", "x" * 10_001, 422, "template: 10,001 characters"),
        (b"[" * 100_000 + b"]" * 100_000, "rows.jsonl", None, 422, "is not usable JSON"),
    ],
)
def test_files_that_cannot_be_read_are_refused_plainly(
    api: Api, content: bytes, filename: str, template: str | None, status: int, needle: str
) -> None:
    group_id = api.group()
    answer = _import(api, group_id, content, filename=filename, template=template)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["detail"]
    assert _rows(api) == (0, 0, 0)


def test_bad_forms_and_configs_are_refused(api: Api) -> None:
    group_id = api.group()
    rows = "prompt\np\n"
    for config, needle in (
        ({"outputs_per_image": 9}, "config: outputs_per_image: Input should be less than or"),
        ({"aspect_ratio": "7:3"}, "does not support aspect_ratio '7:3'"),
        ({"total_images": 4}, "config: total_images: Extra inputs are not permitted"),
    ):
        answer = _import(api, group_id, rows, config=config)
        assert answer.status_code == 422 and needle in answer.json()["detail"], answer.text
    not_json = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id, "config": "{"},
        files={"file": ("rows.csv", b"prompt\np\n")},
    )
    assert not_json.status_code == 422 and not_json.json()["detail"].startswith("config: ")
    no_file = api.client.post("/api/jobs/import", data={"group_id": group_id, "file": "prompt"})
    assert no_file.status_code == 422 and "form field file is required" in no_file.text
    no_group = api.client.post("/api/jobs/import", files={"file": ("rows.csv", b"prompt\np\n")})
    assert no_group.status_code == 422 and "group_id is required" in no_group.text
    unknown = _import(api, "grp_" + "0" * 26, rows)
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
    not_multipart = api.client.post("/api/jobs/import", json={"group_id": group_id})
    assert not_multipart.status_code == 422
    assert _rows(api) == (0, 0, 0)


def test_template_and_config_may_come_as_file_parts(api: Api) -> None:
    group_id = api.group()
    answer = api.client.post(
        "/api/jobs/import",
        data={"group_id": group_id},
        files=[
            ("file", ("rows.csv", b"animal\ncat\n", "text/csv")),
            ("template", ("t.j2", b"a {{ animal }}", "text/plain")),
            ("config", ("c.json", b'{"outputs_per_image": 2}', "application/json")),
        ],
    )
    assert answer.status_code == 201, answer.text
    assert [o.prompt for o in api.outputs(answer.json()["jobs"][0]["id"])] == ["a cat"] * 2


def test_more_than_20000_rows_or_outputs_are_refused(api: Api) -> None:
    group_id = api.group()
    rows = "prompt\n" + "p\n" * 20_001
    answer = _import(api, group_id, rows)
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "rows.csv (read as CSV) has more than 20,000 rows; an import takes at most 20,000: "
        "split the file"
    )
    jsonl = _import(api, group_id, '{"prompt": "p"}\n' * 20_001, filename="rows.jsonl")
    assert jsonl.status_code == 422 and "more than 20,000 rows" in jsonl.json()["detail"]
    outputs = _import(api, group_id, 'prompt,count\n"{a, b}",8\n' + "p,\n" * 19_990)
    assert outputs.status_code == 422
    assert outputs.json()["detail"] == (
        "20,006 images in one job (19,991 rows, with their counts and prompt permutations); "
        "the limit is 20,000"
    )
    assert _rows(api) == (0, 0, 0)


def test_an_import_is_chunked_into_dispatches(api: Api) -> None:
    group_id = api.group()
    answer = _import(api, group_id, "prompt\n" + "p\n" * 40)
    assert answer.status_code == 201, answer.text
    assert _rows(api) == (1, 40, 3)  # chunks of 16: 16 + 16 + 8
    jobs = api.client.get("/api/jobs", params={"mode": "import"}).json()
    assert [job["mode"] for job in jobs["data"]] == ["import"]
