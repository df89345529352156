"""Fuzzing ``caslie inspect`` and ``caslie evaluate`` with mutated rows and predictions files.

A few hundred files are made from the shipped sample with a seeded RNG: flipped bytes,
truncations, fields swapped to another type, nesting thousands of levels deep (in the JSON line and
inside the ``input`` string), megabyte fields, other encodings and other formats (parquet bytes,
empty and binary files). Each command must either succeed or exit 2 with one line of error that
names a file it was given, and never print a traceback. Most cases call the CLI's ``main`` in
process; a few run the real console script to show that the two agree.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caslie.cli import main as caslie_main
from caslie.config import DEFAULT_SPLIT_MAP
from caslie.data.records import SCHEMA_FIELDS, load_gold_rows
from caslie.data.sources import SAMPLE_ROWS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = 20_251_202
N_ROWS_CASES = 240  # rows files: each one through inspect and evaluate
N_PREDICTION_CASES = 90  # predictions files, against clean rows
SUBPROCESS_CASES = (3, 42, 250, 300)  # also run through the console script (rows, predictions)
JSON_FIELDS = ("input", "options", "images", "caption_info")
DEPTHS = (65, 300, 5_000, 100_000)  # just past the row limit (64), then ever deeper
HUGE = 3_000_000  # characters in a "huge" field: a few MB, as a scraped description can be


def _base_lines() -> list[bytes]:
    """Every 9th sample row (all tasks and splits, about 40 rows): small files keep 600 runs fast."""
    return SAMPLE_ROWS.read_bytes().splitlines(keepends=True)[::9]


BASE = _base_lines()
BASE_ROWS = [json.loads(line) for line in BASE]


# ------------------------------------------------------------------------------------ mutations


def _other_type(rng: random.Random, value: object) -> object:
    """A value of another JSON type than ``value`` (str <-> int <-> list <-> dict <-> null...)."""
    choices: list[object] = ["text", 7, -1.5, True, None, [], ["a", 1], {}, {"k": [1, {"x": None}]}]
    choices = [c for c in choices if type(c) is not type(value)]
    return rng.choice(choices)


def _swap_types(rng: random.Random) -> tuple[str, bytes]:
    rows = [dict(r) for r in BASE_ROWS]
    for row in rng.sample(rows, rng.randint(1, 4)):
        name = rng.choice([*SCHEMA_FIELDS, "id", "extra"])
        if name in JSON_FIELDS and rng.random() < 0.5:  # the type inside the JSON string
            row[name] = json.dumps(_other_type(rng, json.loads(row.get(name) or "null")))
        else:
            row[name] = _other_type(rng, row.get(name))
    return ".jsonl", _jsonl(rows)


def _flip_bytes(rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(b"".join(BASE))
    for _ in range(rng.randint(1, 40)):
        data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    return ".jsonl", bytes(data)


def _truncate(rng: random.Random) -> tuple[str, bytes]:
    suffix, data = rng.choice([(".jsonl", b"".join(BASE)), (".json", json.dumps(BASE_ROWS).encode()),
                               (".parquet", _parquet(BASE_ROWS))])  # fmt: skip
    return suffix, data[: rng.randrange(len(data))]


def _deep_line(rng: random.Random) -> tuple[str, bytes]:
    """Nesting in the JSON structure of a line: a field's value, or the whole line."""
    depth = rng.choice(DEPTHS)
    open_, close = rng.choice([("[", "]"), ('{"a": ', "}")])
    nested = open_ * depth + ("1" if open_ != "[" else "") + close * depth
    lines = list(BASE)
    i = rng.randrange(len(lines))
    if rng.random() < 0.3:
        lines[i] = nested.encode() + b"\n"
    else:
        row = json.dumps(dict(BASE_ROWS[i], **{rng.choice(("input", "extra", "images")): "@NEST@"}))
        lines[i] = row.replace('"@NEST@"', nested).encode() + b"\n"
    return ".jsonl", b"".join(lines)


def _deep_string(rng: random.Random) -> tuple[str, bytes]:
    """Nesting inside a JSON-string field such as ``input``."""
    depth = rng.choice(DEPTHS)
    nested = rng.choice(["[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth])
    rows = [dict(r) for r in BASE_ROWS]
    rng.choice(rows)[rng.choice(JSON_FIELDS)] = nested
    return ".jsonl", _jsonl(rows)


def _huge_field(rng: random.Random) -> tuple[str, bytes]:
    rows = [dict(r) for r in BASE_ROWS]
    row = rng.choice(rows)
    text = ("lorem ipsum \u00e9\u4e2d " * (HUGE // 14))[:HUGE]
    name = rng.choice(["instruction", "input", "output", "id", "task", "caption_info"])
    if name == "input":
        row[name] = json.dumps({"description": text})
    elif name == "caption_info":
        row[name] = json.dumps([text])
    else:
        row[name] = text
    return rng.choice([".jsonl", ".json"]), _jsonl(rows) if rng.random() < 0.5 else json.dumps(
        rows
    ).encode()


def _bad_encoding(rng: random.Random) -> tuple[str, bytes]:
    rows = [dict(r) for r in BASE_ROWS]
    for row in rng.sample(rows, 3):
        row["instruction"] += " caf\u00e9 \u00fcber"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    kind = rng.choice(["latin-1", "cp1252", "utf-16", "utf-32", "bom", "bad-bytes", "surrogate"])
    if kind == "bom":
        return ".jsonl", b"\xef\xbb\xbf" + text.encode()
    if kind == "bad-bytes":
        data = bytearray(text.encode())
        for _ in range(3):
            data.insert(rng.randrange(len(data)), rng.choice([0x80, 0xC3, 0xFF, 0xED]))
        return rng.choice([".jsonl", ".json"]), bytes(data)
    if kind == "surrogate":  # a JSON escape of an unpaired surrogate, inside a field
        return ".jsonl", text.replace("caf\u00e9", "caf\\ud800", 1).encode()
    return rng.choice([".jsonl", ".json"]), text.encode(kind)


def _wrong_format(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["parquet-as-jsonl", "parquet-as-json", "empty", "binary", "json-list-as-jsonl",
                       "jsonl-as-json", "json-as-parquet", "typed-parquet", "blank-lines", "scalar-json"])  # fmt: skip
    if kind == "parquet-as-jsonl":
        return ".jsonl", _parquet(BASE_ROWS)
    if kind == "parquet-as-json":
        return ".json", _parquet(BASE_ROWS)
    if kind == "empty":
        return rng.choice([".jsonl", ".json", ".parquet"]), b""
    if kind == "binary":
        return rng.choice([".jsonl", ".json", ".parquet"]), rng.randbytes(rng.randint(1, 5000))
    if kind == "json-list-as-jsonl":
        return ".jsonl", json.dumps(BASE_ROWS, indent=rng.choice([None, 2])).encode()
    if kind == "jsonl-as-json":
        return ".json", b"".join(BASE)
    if kind == "json-as-parquet":
        return ".parquet", json.dumps(BASE_ROWS).encode()
    if kind == "typed-parquet":  # every value of a column swapped to one other type
        name = rng.choice(SCHEMA_FIELDS)
        value = _other_type(rng, "text")
        return ".parquet", _parquet([dict(r, **{name: value}) for r in BASE_ROWS])
    if kind == "blank-lines":
        return ".jsonl", b"\n \n\t\r\n" * rng.randint(0, 3)
    return ".json", json.dumps(rng.choice([1, "rows", None, {"data": 3}, [1, 2]])).encode()


ROW_MUTATIONS: list[Callable[[random.Random], tuple[str, bytes]]] = [
    _swap_types, _flip_bytes, _truncate, _deep_line, _deep_string, _huge_field, _bad_encoding,
    _wrong_format,
]  # fmt: skip
WEIGHTS = [6, 6, 3, 3, 3, 0.5, 2, 3]  # huge fields are slow to print: a handful suffice


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def _clean_predictions(rng: random.Random, ids: list[str], golds: list[str]) -> list[dict]:
    return [
        {"id": i, "prediction": g if rng.random() < 0.7 else "maybe"}
        for i, g in zip(ids, golds, strict=True)
    ]


def _mutated_predictions(rng: random.Random, ids: list[str], golds: list[str]) -> bytes:
    preds = _clean_predictions(rng, ids, golds)
    kind = rng.choice(["types", "flip", "truncate", "deep", "huge", "encoding", "format", "list",
                       "duplicate", "unknown", "missing"])  # fmt: skip
    if kind == "types":
        for p in rng.sample(preds, 3):
            key = rng.choice(["id", "prediction"])
            p[key] = _other_type(rng, p[key])
    elif kind == "deep":
        depth = rng.choice(DEPTHS)
        text = _jsonl(preds).decode().splitlines(keepends=True)
        text[rng.randrange(len(text))] = "[" * depth + "]" * depth + "\n"
        return "".join(text).encode()
    elif kind == "huge":
        rng.choice(preds)["prediction"] = "A" * HUGE
    elif kind == "duplicate":
        preds.append(dict(rng.choice(preds), prediction="yes"))
    elif kind == "unknown":
        preds.append({"id": "not-a-row\nsecond line", "prediction": "yes"})
    elif kind == "missing":
        preds = preds[: rng.randrange(len(preds))]
    elif kind == "list":
        aligned: list[object] = [p["prediction"] for p in preds]
        aligned[rng.randrange(len(aligned))] = _other_type(rng, "x")
        return json.dumps(aligned[: len(aligned) - rng.randint(0, 1)]).encode()
    data = _jsonl(preds)
    if kind == "flip":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
        return bytes(buf)
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "encoding":
        return (
            data.decode()
            .replace('"maybe"', '"m\u00e4ybe"')
            .encode(rng.choice(["latin-1", "utf-16"]))
        )
    if kind == "format":
        return rng.choice([_parquet(preds), b"", rng.randbytes(300), b"\x00" * 50])
    return data


# ------------------------------------------------------------------------------------- checking


def _run_in_process(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = caslie_main(args)
    except SystemExit as stop:  # argparse
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_process(args: list[str]) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "caslie.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def _check(result: tuple[int, str, str], files: list[Path], strict: bool) -> str | None:
    """Assert success, or exit 2 with one error line naming one of ``files``; return that line.

    ``strict``: stderr holds nothing but the error line (under ``data.on_error=skip`` the warning
    that lists the skipped rows may come before it).
    """
    code, out, err = result
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    if code == 0:
        return None
    assert code == 2, (code, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("caslie: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    if strict:
        assert len(lines) == 1, err[-3000:]
    assert any(str(f) in errors[0] for f in files), errors[0][:3000]
    return errors[0]


def _gold(path: Path) -> tuple[list[str], list[str]]:
    rows = load_gold_rows(str(path), dict(DEFAULT_SPLIT_MAP))
    return [r.id for r in rows], [r.output for r in rows]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    path = tmp_path_factory.mktemp("clean") / "rows.jsonl"
    path.write_bytes(b"".join(BASE))
    return path, *_gold(path)


def _case(
    n: int, tmp_path: Path, clean: tuple[Path, list[str], list[str]]
) -> tuple[list[str], list[str], list[Path], bool]:
    """The ``inspect`` and ``evaluate`` arguments of case ``n``, the files they name, and whether
    stderr must hold only the error line."""
    rng = random.Random(SEED * 1000 + n)
    clean_path, ids, golds = clean
    if n < N_ROWS_CASES:
        suffix, content = rng.choices(ROW_MUTATIONS, WEIGHTS)[0](rng)
        rows = tmp_path / f"rows{suffix}"
        rows.write_bytes(content)
        preds = tmp_path / "preds.jsonl"
        preds.write_bytes(_jsonl(_clean_predictions(rng, ids, golds)))
    else:
        rows = clean_path
        preds = tmp_path / "preds.jsonl"
        preds.write_bytes(_mutated_predictions(rng, ids, golds))
    on_error = rng.choice(["raise", "raise", "skip"])
    inspect = ["inspect", "--config", str(REPO / "configs/demo.yaml"), f"data.source={rows}",
               f"data.cache_dir={tmp_path / 'cache'}", f"data.on_error={on_error}",
               f"data.fusion={rng.choice(['none', 'uia', 'mv'])}", "--n", "50",
               "--split", rng.choice(["train", "test_ind", "test_ood", "val"]),
               "--format", rng.choice(["text", "jsonl"])]  # fmt: skip
    evaluate = ["evaluate", "--data", str(rows), "--predictions", str(preds),
                "--out", str(tmp_path / "metrics.json"), *(["--allow-missing"] if rng.random() < 0.5 else []),
                *(["--split", "test"] if rng.random() < 0.2 else [])]  # fmt: skip
    return inspect, evaluate, [rows, preds], on_error == "raise"


@pytest.mark.parametrize("n", range(N_ROWS_CASES + N_PREDICTION_CASES))
def test_mutated_files_succeed_or_fail_in_one_line(n, tmp_path, clean, capsys):
    inspect, evaluate, files, strict = _case(n, tmp_path, clean)
    _check(_run_in_process(inspect, capsys), files[:1], strict)
    _check(_run_in_process(evaluate, capsys), files, strict=True)  # evaluate logs nothing first


@pytest.mark.parametrize("n", SUBPROCESS_CASES)
def test_the_console_script_fails_as_main_does(n, tmp_path, clean, capsys):
    inspect, evaluate, files, strict = _case(n, tmp_path, clean)
    for args, named, alone in ((inspect, files[:1], strict), (evaluate, files, True)):
        here = _run_in_process(args, capsys)
        there = _run_process(args)
        assert _check(there, named, alone) == _check(here, named, alone)
        assert there[0] == here[0]
