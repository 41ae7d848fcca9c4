# mcnotify single-file build: the archive's __main__.py, run before shiv unpacks anything.
# scripts/build_dist.py writes this file into dist/mcnotify with BUILT_FOR set to the Python the build used.
# Written for any Python 3 (no newer syntax, so %-formatting): its whole job is to say no clearly on the wrong one.
# ruff: noqa: UP031
import os
import stat
import sys

BUILT_FOR = (3, 11)  # set by scripts/build_dist.py
# The documented exit code of a file that cannot run here (wrong Python, nowhere to unpack): 78, like any
# other error in how mcnotify is installed or configured.
EXIT_CONFIG = 78


def _fail(message):
    sys.stderr.write("mcnotify: error: %s\n" % message)
    sys.exit(EXIT_CONFIG)


def _check_python():
    # The archive holds compiled dependencies built for one Python: any other fails later with a traceback,
    # so refuse at once, --version included.
    running = tuple(sys.version_info[:2])
    if running != BUILT_FOR:
        want = "%d.%d" % BUILT_FOR
        _fail(
            "this file was built for Python %s and cannot run on Python %d.%d (%s): run it with python%s, "
            "or build it again with `make dist` on this Python" % (want, running[0], running[1], sys.executable, want)
        )


def _writable(path):
    """`path` is, or could be made, a folder this user can write to."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except OSError:
        return False
    if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        return False
    # access() trusts mode bits; /proc, a read-only mount or a full disk say no only when one tries.
    probe = os.path.join(path, ".mcnotify-probe-%d" % os.getpid())
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError:
        return False
    return True


def _private_tmp():
    """A 0700 folder in the temporary folder owned by this user, or None when one cannot be trusted."""
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "mcnotify-shiv-%d" % os.geteuid())
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(path)
    # Someone else's folder (or a symlink planted in a shared /tmp) could swap the code we are about to run.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return path


def _unpack_root():
    """Where shiv unpacks the archive: $SHIV_ROOT, else the first usable of ~/.shiv, $XDG_CACHE_HOME/mcnotify,
    systemd's $CACHE_DIRECTORY and $RUNTIME_DIRECTORY, and a private folder in /tmp."""
    given = os.environ.get("SHIV_ROOT")
    if given:
        if _writable(given):
            return given
        # A read-only root unpacked earlier (by an operator, for this very file) is fine as it is.
        name = os.path.basename(os.path.realpath(sys.argv[0])) + "_"
        try:
            if any(entry.startswith(name) for entry in os.listdir(given)):
                return given
        except OSError:
            pass
        _fail("SHIV_ROOT=%s is not a folder this user can write to (the single file unpacks itself there once)" % given)
    tried = []
    candidates = [os.path.join(os.path.expanduser("~"), ".shiv")]
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(os.path.join(os.environ["XDG_CACHE_HOME"], "mcnotify"))
    for var in ("CACHE_DIRECTORY", "RUNTIME_DIRECTORY"):  # systemd may list several, separated by ':'
        if os.environ.get(var):
            candidates.append(os.environ[var].split(":")[0])
    for path in candidates:
        if _writable(path):
            return path
        tried.append(path)
    private = _private_tmp()
    if private:
        return private
    tmp = os.path.join(os.environ.get("TMPDIR") or "/tmp", "mcnotify-shiv-%d" % os.geteuid())
    tried.append("%s (not a 0700 folder of this user)" % tmp if os.path.lexists(tmp) else tmp)
    _fail(
        "nowhere to unpack the single file (tried %s): set SHIV_ROOT to a folder this user can write to"
        % ", ".join(tried)
    )
    return ""


_check_python()
# shiv reads SHIV_ROOT from the environment; processes mcnotify starts inherit it and unpack nothing again.
os.environ["SHIV_ROOT"] = _unpack_root()

import _bootstrap  # noqa: E402  (shiv's bootstrap, inside the archive)

_bootstrap.bootstrap()
