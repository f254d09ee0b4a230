"""Limits and shape checks for untrusted annotation files, shared by the importers.

Each function turns a hostile or malformed input into a per-file `Problem` or one `DatasetError`
naming the file: YAML without anchors/aliases and at most 1 MB (no alias bombs), class lists of a
sane length, COCO documents of the documented shape and parquet columns of the expected types.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from sainet.core.errors import DatasetError
from sainet.core.safepath import printable

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_CLASSES", "MAX_NAME_CHARS", "load_yaml",
           "load_json", "check_class_names", "check_coco_doc", "check_parquet_schema", "walk_files"]

#: Dataset YAML files are a few hundred bytes; anything past this is refused before parsing.
MAX_YAML_BYTES = 1 << 20
#: More classes than any detection dataset has; also bounds names inferred from label files.
MAX_CLASSES = 4096
MAX_NAME_CHARS = 256
#: Nesting a dataset YAML may have (a real one nests 2-3 deep); PyYAML composes recursively.
MAX_YAML_DEPTH = 64


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors and aliases: no billion-laughs expansion, however small the file."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - PyYAML's own signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(None, None, "YAML anchors and aliases are not accepted", event.start_mark)
        depth = getattr(self, "_sainet_depth", 0)
        if depth >= MAX_YAML_DEPTH:  # before Python's recursion limit: a typed error, never RecursionError
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} deep", event.start_mark)
        self._sainet_depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._sainet_depth = depth


def load_yaml(path: str | os.PathLike[str]) -> Any:  # noqa: ANN401 - any YAML document
    """Parse a small YAML file safely: at most `MAX_YAML_BYTES`, no anchors/aliases, UTF-8."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise DatasetError(f"{path}: {size} bytes, more than a dataset YAML may be ({MAX_YAML_BYTES})")
        text = path.read_bytes()[: MAX_YAML_BYTES + 1].decode("utf-8")
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise DatasetError(f"{path}: not valid YAML: nested too deep") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid YAML: {' '.join(str(e).split())[:200]}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror}") from None


def check_class_names(names: list[str], source: str) -> list[str]:
    """At most `MAX_CLASSES` unique names of at most `MAX_NAME_CHARS` characters.

    A repeated name is refused: classes are unified by name (pack, stage 2), so two ids of one name
    would silently become one class.
    """
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{source}: {len(names)} classes; sainet accepts at most {MAX_CLASSES}")
    long = next((n for n in names if len(n) > MAX_NAME_CHARS), None)
    if long is not None:
        raise DatasetError(f"{source}: a class name of {len(long)} characters (at most {MAX_NAME_CHARS})")
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in first:
            raise DatasetError(f"{source}: class name {printable(n)!r} is used by ids {first[n]} and {i}; "
                               "class names must be unique (they are matched by name)")
        first[n] = i
    return names


def load_json(path: Path, rel: str) -> Any:  # noqa: ANN401 - any JSON document
    """Parse a JSON annotation file; a document nested past Python's recursion limit is a `DatasetError`
    (json.loads raises RecursionError cleanly; ids and shapes are checked by `check_coco_doc`)."""
    import json

    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{rel}: cannot read: {e.strerror}") from None
    try:
        return json.loads(data)
    except RecursionError:
        raise DatasetError(f"{rel}: JSON nested too deep for an annotation file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{rel}: not valid JSON: {str(e)[:200]}") from None


def walk_files(folder: Path, problem: Callable[[str, str], None] | None = None) -> Iterator[Path]:
    """Every regular file under `folder`, without recursion (any depth) and without following
    symlinked folders (a link loop cannot trap it). A folder that cannot be listed (too long a path,
    no permission) is reported through `problem(path, why)` and skipped."""
    stack = [str(folder)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            if problem is not None:
                problem(d, f"folder cannot be listed: {e.strerror}")
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue


def _objects(doc: dict, key: str, rel_json: str, *, required: bool = True) -> list[dict]:
    items = doc.get(key, [] if not required else None)
    if not isinstance(items, list):
        raise DatasetError(f"{rel_json}: {key!r} is {type(items).__name__}, expected a list")
    bad = next((i for i, x in enumerate(items) if not isinstance(x, dict)), None)
    if bad is not None:
        raise DatasetError(f"{rel_json}: {key}[{bad}] is {type(items[bad]).__name__}, expected an object")
    return items


def check_coco_doc(doc: object, rel_json: str) -> None:
    """A COCO detection document's shape: lists of objects, categories with unique ids and names.

    Duplicate category ids are an error (they would silently relabel a class); a missing
    ``annotations`` is an unlabelled set, but ``annotations: null`` or a non-object entry is malformed.
    """
    if not isinstance(doc, dict):
        raise DatasetError(f"{rel_json}: a COCO json is an object, this is a {type(doc).__name__}")
    cats = _objects(doc, "categories", rel_json)
    _objects(doc, "images", rel_json)
    if "annotations" in doc:
        _objects(doc, "annotations", rel_json)
    for i, c in enumerate(cats):
        if not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise DatasetError(f"{rel_json}: categories[{i}] has no integer id")
        if not isinstance(c.get("name"), str) or not c["name"]:
            raise DatasetError(f"{rel_json}: categories[{i}] (id {c['id']}) has no name")
    ids = [c["id"] for c in cats]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise DatasetError(f"{rel_json}: category id {dup} is used by more than one category")
    check_class_names([c["name"] for c in cats], rel_json)


def check_parquet_schema(schema: Any, shard: str) -> None:  # noqa: ANN401 - pyarrow.Schema
    """PyroSDIS columns of the published types: image struct<bytes: binary>, annotations and image_name strings."""
    import pyarrow as pa

    def fail(col: str, want: str) -> DatasetError:
        return DatasetError(f"{shard}: column {col!r} is {schema.field(col).type}, expected {want}")

    image = schema.field("image").type
    if not pa.types.is_struct(image) or image.get_field_index("bytes") < 0 or not (
            pa.types.is_binary(image.field("bytes").type) or pa.types.is_large_binary(image.field("bytes").type)):
        raise fail("image", "struct<bytes: binary, path: string>")
    for col in ("annotations", "image_name"):
        if col in schema.names:
            t = schema.field(col).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
                raise fail(col, "string")
