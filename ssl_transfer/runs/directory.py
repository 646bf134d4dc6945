"""The run directory (``--out``): checked before anything is written, locked for the run's life,
written through a manifest, and replaced by an ``--overwrite`` run only when that run completes.

Rules (docs/reliability.md, "Run directory"):

- **Check first.** :meth:`RunDirectory.check` changes nothing; it runs before data are loaded and
  again under the lock. A file, a symlink or an empty string as ``--out``, a parent that is a file,
  an existing run without ``--overwrite`` / ``--resume``, and ``--overwrite`` of a directory that
  holds anything a run did not write (or the ``--teacher`` being read) are one-line errors.
- **One run per directory.** :meth:`RunDirectory.open` takes an exclusive ``flock`` on
  ``OUT/.lock`` for the run's life. A second run on the same ``--out`` fails at once; the OS
  releases the lock when the process dies, so a killed run can be resumed.
- **Manifest.** Every path the run writes is recorded in ``OUT/manifest.json`` *before* it is
  written (Lightning's logs and checkpoints at the start of their stage). ``--overwrite`` removes
  exactly those paths (and the temporary files of their atomic writes) and refuses, with one
  line, when anything else is there. Directories written by an older ssl-transfer, without a
  manifest, are judged by the names such runs wrote.
- **Replace on completion.** An ``--overwrite`` run is built in ``OUT/.next/``; only when it has
  completed (:meth:`RunDirectory.commit`) does it replace the old run: the old files move to
  ``OUT/.old/``, the new ones up, then ``.old`` is deleted. An interrupted commit is finished by
  the next command on that directory. A failed or killed ``--overwrite`` run leaves the old run
  as it was (``--resume`` continues the staged run).
- **DDP.** Only global rank 0 checks, locks and writes; worker processes (started by Lightning
  by re-running the command) learn the working directory from ``$SSL_TRANSFER_RUN_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from ..errors import OutputExistsError

MANIFEST = "manifest.json"
LOCK = ".lock"
NEXT = ".next"
OLD = ".old"
MOVED = ".moved"
WORKDIR_ENV = "SSL_TRANSFER_RUN_DIR"
_CONTROL = {LOCK, NEXT, OLD}
#: How directories written before manifests existed are judged: the paths such runs wrote.
_LEGACY = re.compile(r"^(run\.json|results\.json|report\.md|teacher\.pt|teacher_continued\.pt|student(_.+)?\.pt"
                     r"|plots/(loss_curves|accuracy|knn_monitor)\.png|logs/[^/]+/(metrics\.csv|hparams\.yaml)"
                     r"|checkpoints/[^/]+/last\.ckpt)$")
_TMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # an atomic write's temporary file: .<name>.<random>.tmp


def _files(root: Path) -> list[str]:
    """Every file (or link) below ``root`` as a relative posix path, control entries excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in _CONTROL]
            filenames = [f for f in filenames if f not in _CONTROL]
        out += [(rel / f).as_posix() for f in filenames]
    return sorted(out)


def read_manifest(root: Path) -> set[str] | None:
    """The paths a run recorded in ``root/manifest.json``; None when there is none (older run)."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())["files"]
        return {str(e) for e in entries} | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputExistsError(f"'{path}' is unreadable, so which files a run wrote there is unknown; move the "
                                "files you want to keep and delete the directory, or choose another --out") from None


def _owned(rel: str, manifest: set[str] | None) -> bool:
    if manifest is None:
        return bool(_LEGACY.match(rel))
    if rel in manifest:
        return True
    folder, _, name = rel.rpartition("/")
    tmp = _TMP.match(name)
    return bool(tmp) and (f"{folder}/{tmp['name']}" if folder else tmp["name"]) in manifest


def foreign_files(root: Path) -> list[str]:
    """Files under ``root`` that no run recorded (what ``--overwrite`` must not delete)."""
    manifest = read_manifest(root)
    return [rel for rel in _files(root) if not _owned(rel, manifest)]


def _short(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class RunDirectory:
    """The output directory of one run, held locked from :meth:`open` to :meth:`close`.

    ``out`` is where the finished run lives; ``work`` where this run writes (``out``, or
    ``out/.next`` while an ``--overwrite`` run is being built). Paths a run writes go through
    :meth:`register` first.
    """

    def __init__(self, out: Path, work: Path, lock_fd: int | None):
        self.out, self.work, self._lock_fd = out, work, lock_fd
        self._manifest: set[str] = set()

    # ---- checks (no writes) ------------------------------------------------------------------

    @staticmethod
    def check(out: str | os.PathLike, overwrite: bool = False, resume: bool = False, keep=None,
              holding_lock: bool = False) -> None:
        """Raise a one-line OutputExistsError (changing nothing) unless a run may write to ``out``
        (``holding_lock``: this process holds ``out``'s lock, so it is not probed)."""
        if not _is_global_zero():
            return
        if os.fspath(out) == "":
            raise OutputExistsError("--out is empty; pass a directory, e.g. --out runs/my_run")
        out = Path(out)
        if overwrite and resume:
            raise OutputExistsError("--resume and --overwrite contradict each other; pass one of them")
        if out.is_symlink():
            raise OutputExistsError(f"--out '{out}' is a symbolic link; pass the directory it points to "
                                    f"('{out.resolve()}') or another --out")
        for parent in out.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise OutputExistsError(f"--out '{out}' lies under '{parent}', which is a file; choose another --out")
                break
        if out.exists() and not out.is_dir():
            raise OutputExistsError(f"--out '{out}' is a file, not a directory; choose another --out")
        if not holding_lock:
            _check_unlocked(out)
        if resume:
            if not out.is_dir() or not ((out / NEXT / "run.json").is_file() or (out / "run.json").is_file()):
                raise OutputExistsError(f"--resume: '{out}' holds no run to resume (run.json missing); start it "
                                        "without --resume")
            return
        if not out.is_dir() or not _files(out):
            return
        if not overwrite:
            raise OutputExistsError(f"output directory '{out}' already exists and is not empty; pass --overwrite "
                                    "to replace it or choose another --out")
        if keep is not None and out.resolve() in Path(keep).resolve().parents:
            raise OutputExistsError(f"--teacher '{keep}' lies inside --out '{out}', which --overwrite would replace; "
                                    f"write this run to another --out, e.g. {out}_transfer")
        foreign = foreign_files(out)
        if foreign:
            raise OutputExistsError(f"--overwrite would replace '{out}', which holds files that no ssl-transfer run "
                                    f"wrote ({_short(foreign)}); move them away or choose a new or empty --out")

    # ---- life cycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, out: str | os.PathLike, overwrite: bool = False, resume: bool = False, keep=None) -> RunDirectory:
        """Lock ``out`` (created if needed), finish an interrupted commit, check it again under the
        lock and choose where this run writes. Worker processes of a DDP run only learn the
        working directory."""
        out = Path(out)
        if not _is_global_zero():
            return cls(out, Path(os.environ.get(WORKDIR_ENV, out)), None)
        cls.check(out, overwrite, resume, keep)
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputExistsError(f"cannot create --out '{out}' ({e.strerror}); choose a writable --out") from None
        fd = _lock(out)
        try:
            _finish_commit(out)
            cls.check(out, overwrite, resume, keep, holding_lock=True)
        except BaseException:
            _unlock(fd)
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        if resume:
            work = out / NEXT if (out / NEXT / "run.json").is_file() else out
        else:
            _discard_staged(out)  # a staged --overwrite run that never completed
            work = out / NEXT if _files(out) else out  # --overwrite: build the new run beside the old
            work.mkdir(exist_ok=True)
        os.environ[WORKDIR_ENV] = str(work)
        rd = cls(out, work, fd)
        if resume:
            rd._manifest = read_manifest(work) or set(_files(work))
        return rd

    @classmethod
    def scratch(cls, work: str | os.PathLike) -> RunDirectory:
        """A working folder for benchmarks and sweeps, which train many models side by side and
        manage their folder themselves: no checks, no lock; written files are still recorded."""
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        rd = cls(work, work, None)
        rd._manifest = read_manifest(work) or set()
        return rd

    def register(self, *rels: str) -> None:
        """Record paths (relative to the run directory) before they are written."""
        new = set(rels) - self._manifest
        if not new or not _is_global_zero():
            return
        from ..io import atomic_write_text

        self._manifest |= new | {MANIFEST}
        atomic_write_text(self.work / MANIFEST, json.dumps({"files": sorted(self._manifest)}, indent=1))

    def path(self, rel: str) -> Path:
        """``work / rel``, registered in the manifest."""
        self.register(rel)
        return self.work / rel

    def final(self, rel: str) -> Path:
        """Where ``rel`` lives once the run has completed (what results.json records)."""
        return self.out / rel

    def commit(self) -> None:
        """A completed ``--overwrite`` run replaces the old one (no-op for a run written in place):
        the old run's files move to ``.old`` (marked complete by ``.old/.moved``), the new ones up
        from ``.next``, then ``.old`` is deleted. Files that appeared during the run stop it."""
        if self.work == self.out or not _is_global_zero():
            return
        foreign = foreign_files(self.out)
        if foreign:
            raise OutputExistsError(f"files appeared in '{self.out}' during the run ({_short(foreign)}); the new run "
                                    f"stays in '{self.work}': move them away, then resume it with --resume")
        old = self.out / OLD
        old.mkdir()
        for entry in list(self.out.iterdir()):
            if entry.name not in _CONTROL:
                entry.rename(old / entry.name)
        (old / MOVED).touch()
        _finish_commit(self.out)
        self.work = self.out

    def close(self) -> None:
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            self._lock_fd = None
        os.environ.pop(WORKDIR_ENV, None)

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finish_commit(out: Path) -> None:
    """Complete an interrupted commit: with ``.old/.moved`` the old run is all in ``.old`` and the
    complete new run in ``.next`` moves up; without it the old run's files move back (the staged
    run stays in ``.next``, where ``--resume`` finds it)."""
    old, nxt = out / OLD, out / NEXT
    if not old.exists():
        return
    if (old / MOVED).exists():
        if nxt.is_dir():
            for entry in list(nxt.iterdir()):
                entry.rename(out / entry.name)
            nxt.rmdir()
        shutil.rmtree(old)
        return
    for entry in list(old.iterdir()):
        entry.rename(out / entry.name)
    old.rmdir()


def _discard_staged(out: Path) -> None:
    """Delete a staged run in ``out/.next`` that never completed (only the files it recorded)."""
    nxt = out / NEXT
    if not nxt.is_dir():
        return
    manifest = read_manifest(nxt)
    kept = [rel for rel in _files(nxt) if not _owned(rel, manifest)]
    if kept:
        raise OutputExistsError(f"'{nxt}' (an unfinished --overwrite run) holds files no run wrote ({_short(kept)}); "
                                "move them away or delete the folder")
    shutil.rmtree(nxt)


def _lock(out: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return None
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputExistsError(f"cannot write in --out '{out}' ({e.strerror}); choose a writable --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        error = _busy(fd, out)
        os.close(fd)
        raise error from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _busy(fd: int, out: Path) -> OutputExistsError:
    """The error for a lock file ``fd`` that another live process holds (it wrote its pid there)."""
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    return OutputExistsError(f"another ssl-transfer run (pid {holder}) is writing to '{out}'; wait for it to "
                             "finish or choose another --out")


def _check_unlocked(out: Path) -> None:
    """Fail at once, writing nothing, when a live run holds ``out``'s lock (:func:`_lock` takes it
    for real when the run starts; this only spares a second run the seconds of loading first)."""
    try:
        import fcntl

        fd = os.open(out / LOCK, os.O_RDONLY)
    except (ImportError, OSError):  # not POSIX, or no lock file: nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _busy(fd, out) from None
    finally:
        os.close(fd)  # closing releases the probe's shared lock


def _unlock(fd: int | None) -> None:
    if fd is None:
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _is_global_zero() -> bool:
    """:func:`ssl_transfer.distributed.is_global_zero`, without importing lightning before the run
    needs it: the checks made before a run starts (``RunDirectory.check``) must not wait seconds
    for it. Until lightning is imported no Trainer can have set a rank, so the rank is the process
    group's if one exists, else the one a launcher put in the environment, read as Lightning
    reads it (``rank_zero_only.rank``)."""
    if "lightning" in sys.modules:
        from ..distributed import is_global_zero

        return is_global_zero()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    rank = next((os.environ[k] for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
                 if k in os.environ), "0")
    return int(rank) == 0
