"""File I/O for model and export directories, through TensorFlow's filesystem layer.

Model directories may live on any filesystem `tf.io.gfile` knows: local paths, `gs://`,
`s3://` (with tensorflow-io), `hdfs://`, or TensorFlow's in-memory `ram://` (which takes the
same URL code path, and so is what the tests use). Everything the package writes beside the
checkpoints or into an export goes through this module, never through `open` or `os`, except
where a local path allows more: `atomic_write` fsyncs and renames with the kernel's guarantee,
and `rename_dir` is a single atomic `os.rename`.

Files are created with mode 0666 minus the process umask, like `open` would, so a server or a
job running as another user can read them when the umask allows it.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from typing import List, Union

import tensorflow as tf

gfile = tf.io.gfile
TMP_PREFIX = ".tmp-"


def is_local(path: str) -> bool:
    """Whether `path` is on the local filesystem (a plain path or `file://`)."""
    return "://" not in str(path) or str(path).startswith("file://")


def local_path(path: str) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


def join(*parts: str) -> str:
    return os.path.join(*[str(p) for p in parts])


def dirname(path: str) -> str:
    return os.path.dirname(str(path).rstrip("/"))


def basename(path: str) -> str:
    return os.path.basename(str(path).rstrip("/"))


def exists(path: str) -> bool:
    return gfile.exists(path)


def isdir(path: str) -> bool:
    return gfile.isdir(path)


def isfile(path: str) -> bool:
    return gfile.exists(path) and not gfile.isdir(path)


def makedirs(path: str) -> None:
    gfile.makedirs(path)


def listdir(path: str) -> List[str]:
    """Names in a directory, without the trailing `/` some filesystems add to folders."""
    return sorted(name.rstrip("/") for name in gfile.listdir(path))


def glob(pattern: str) -> List[str]:
    return sorted(gfile.glob(pattern))


def read_bytes(path: str) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def remove(path: str) -> None:
    gfile.remove(path)


def rmtree(path: str) -> None:
    if gfile.isdir(path):
        gfile.rmtree(path)
    elif gfile.exists(path):
        gfile.remove(path)


def rename(source: str, target: str, overwrite: bool = False) -> None:
    gfile.rename(source, target, overwrite=overwrite)


def size(path: str) -> int:
    """Bytes in a file, or in every file below a directory."""
    if not gfile.isdir(path):
        return gfile.stat(path).length
    return sum(gfile.stat(join(d, f)).length for d, _, files in gfile.walk(path) for f in files)


def umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, data: Union[bytes, str]) -> str:
    """Write a file so that readers see the old or the new content, never a partial one.

    Local paths: a temporary file in the same folder, fsynced, then renamed into place (atomic).
    Other filesystems: a temporary object renamed over the target, which is as atomic as the
    filesystem makes a rename. The folder is created if needed; returns `path`.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if is_local(path):
        return _atomic_write_local(local_path(path), data)
    directory = dirname(path)
    gfile.makedirs(directory)
    tmp = join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{basename(path)}")
    try:
        with gfile.GFile(tmp, "wb") as f:
            f.write(data)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise
    return path


def _atomic_write_local(path: str, data: bytes) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _tree_files(source: str, target: str):
    """(file under `source`, the same path under `target`) for every file of a tree, making
    the target folders on the way."""
    for directory, _, files in gfile.walk(source):
        relative = os.path.relpath(directory, source)
        destination = target if relative == "." else join(target, relative)
        gfile.makedirs(destination)
        for name in files:
            yield join(directory, name), join(destination, name)


def copy_tree(source: str, target: str) -> None:
    """Copy a directory tree file by file (across filesystems, e.g. local to `gs://`)."""
    for src, dst in _tree_files(source, target):
        gfile.copy(src, dst, overwrite=True)


def rename_dir(source: str, target: str) -> None:
    """Move a directory to `target` (which must not exist): one atomic `os.rename` on a local
    filesystem; elsewhere file by file (object stores have no directories to rename)."""
    if gfile.exists(target):
        raise FileExistsError(f"{target} already exists")
    if is_local(source) and is_local(target):
        os.rename(local_path(source), local_path(target))
        return
    for src, dst in list(_tree_files(source, target)):
        gfile.rename(src, dst, overwrite=True)
    gfile.rmtree(source)


def local_staging_dir(target_dir: str, prefix: str = TMP_PREFIX) -> str:
    """A new hidden folder to stage files before moving them into `target_dir`: inside it when
    it is local (so the final rename is atomic), else a local temporary folder."""
    if is_local(target_dir):
        local = local_path(target_dir)
        os.makedirs(local, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=local)
    else:
        path = tempfile.mkdtemp(prefix="estimator-gan-staging-")
    os.chmod(path, 0o777 & ~umask())  # mkdtemp's 0700 would outlive the rename
    return path
