"""Where runs keep their checkpoints: a local folder, or any URI pyarrow
opens (``file://``, ``s3://``, ``gs://``, ``hdfs://``, ``abfs://``).

Every checkpoint is read through :func:`local_folder` (Ray's
``Checkpoint.as_directory``: the folder itself when it is local, a
temporary download otherwise), or one file at a time with
:func:`read_bytes` / :func:`download_file` when a step needs only that,
never by wrapping its path in a local ``Path``: on object storage Ray's
``checkpoint.path`` has lost its scheme and names nothing on this machine.

Relative paths: under ``ray job submit`` the driver runs in a per-session
copy of the working dir, so a relative path would move with every
submission (a resubmitted search would start from scratch). They resolve
against ``$AVSER_STORAGE_ROOT`` (``avser cluster up --storage-root``) when
it is set, and are refused inside a submitted job when it is not.
"""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from avser.errors import ConfigError

STORAGE_ROOT_ENV = "AVSER_STORAGE_ROOT"
# Where Ray unpacks a submitted job's working dir: a new folder per submission.
WORKING_DIR_COPY = re.compile(r"/\S*?/runtime_resources/working_dir_files/_ray_pkg_[0-9a-f]+/")
# Set by Ray's job supervisor for a submitted job's driver.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def is_uri(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URIs alike."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def in_submitted_job() -> bool:
    """True in the driver of a ``ray job submit`` with a working_dir."""
    spec = os.environ.get(JOB_CONFIG_ENV)
    if not spec:
        return False
    try:
        runtime_env = json.loads(spec).get("runtime_env") or {}
    except json.JSONDecodeError:
        return False
    return bool(runtime_env.get("working_dir"))


def resolve(path: str, key: str = "storage_path") -> str:
    """An absolute local path or a URI for ``path`` (the value of ``key``)."""
    path = str(path)
    if is_uri(path) or Path(path).is_absolute():
        return path
    root = os.environ.get(STORAGE_ROOT_ENV)
    if root:
        return join(root, path) if is_uri(root) else str(Path(root, path).resolve())
    if in_submitted_job():
        raise ConfigError(
            f"{key}={path!r} is relative, and this job runs in a per-submission copy of the "
            f"working dir: its checkpoints would be lost to the next submission. Give an absolute "
            f"path or a URI (--set {key}=/shared/ray_results or s3://bucket/avser), or start the "
            f"cluster with `avser cluster up --storage-root DIR` (sets ${STORAGE_ROOT_ENV})")
    return str(Path(path).resolve())


def portable(value: Any) -> Any:
    """``value`` with any path into a submitted job's working-dir copy made
    relative to it: the copy moves with every submission, and a resumed run
    compares (and MLflow keeps) what its first submission recorded."""
    return WORKING_DIR_COPY.sub("", value) if isinstance(value, str) else value


def filesystem(where: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    if is_uri(where):
        try:
            return pyarrow.fs.FileSystem.from_uri(where)
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise ConfigError(f"cannot open storage {where!r}: {err}. Use a local path, file://, "
                              "s3://, gs://, hdfs:// or abfs:// (with its credentials set)") from err
    return pyarrow.fs.LocalFileSystem(), str(Path(where).resolve())


def checkpoint_uri(ckpt) -> str:
    """A Ray ``Checkpoint``'s location as a string :func:`local_folder` takes
    back: its local path, or its path with the filesystem's scheme restored."""
    import pyarrow.fs

    if ckpt.filesystem is None or isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        return ckpt.path
    return f"{ckpt.filesystem.type_name}://{ckpt.path.lstrip('/')}"


@contextmanager
def local_folder(where: str) -> Iterator[Path]:
    """A checkpoint folder (local path or URI) as a local folder for the
    duration of the ``with``."""
    if not is_uri(where):
        yield Path(where)
        return
    from ray.train import Checkpoint

    fs, path = filesystem(where)
    with Checkpoint(path, filesystem=fs).as_directory() as folder:
        yield Path(folder)


def file_type(where: str):
    """What is at ``where``: a ``pyarrow.fs.FileType`` (one request on remote storage)."""
    fs, path = filesystem(where)
    return fs.get_file_info(path).type


def exists(where: str) -> bool:
    import pyarrow.fs

    return file_type(where) != pyarrow.fs.FileType.NotFound


def is_folder(where: str) -> bool:
    import pyarrow.fs

    return file_type(where) == pyarrow.fs.FileType.Directory


def read_bytes(where: str) -> io.BytesIO:
    fs, path = filesystem(where)
    with fs.open_input_stream(path) as stream:
        return io.BytesIO(stream.read())


def download_file(where: str, local: str | Path) -> Path:
    """Copy one file at ``where`` (a local path or a URI) to ``local``."""
    Path(local).write_bytes(read_bytes(where).getbuffer())
    return Path(local)


def upload_file(local: str | Path, where: str) -> None:
    """Copy one local file to ``where`` (a local path or a URI)."""
    fs, path = filesystem(where)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as source, fs.open_output_stream(path) as sink:
        sink.write(source.read())
