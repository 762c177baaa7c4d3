"""Check the package as users get it: the sdist and the wheel, installed into a fresh venv.

Run by ``make wheel-check`` (and so by .ci/run) with the project venv's Python, which has
``build`` and ``twine``; the fresh venv is made with ``--python`` (default: this one).

1. ``python -m build`` makes the sdist, then the wheel *from the sdist*; a second wheel is
   built straight from the checkout. Both wheels must hold the same files, byte for byte
   (so the sdist is complete), and the wheel every file of the package the checkout tracks
   (migrations, templates, ``py.typed``...), checked by name as well.
2. ``twine check`` on both distributions (the README renders on PyPI, metadata is valid).
3. A fresh virtual environment gets the wheel (with the ``report`` extra) and, from a
   directory outside the checkout: ``secure-kv demo``; ``secure-kv init`` on a new SQLite
   file; a database created at Alembic revision 0001 by the installed migrations and then
   upgraded by ``secure-kv init``; ``audit report --format html``; the shell completion
   script. Each step fails the check with what went wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUST_SHIP = (
    "secure_kv/py.typed",
    "secure_kv/sql/migrations/env.py",
    "secure_kv/sql/migrations/script.py.mako",
    "secure_kv/sql/migrations/versions/0001_initial.py",
    "secure_kv/templates/report.html.j2",
)
# Makes a database at revision 0001 with the migrations of the *installed* package.
AT_REVISION_0001 = """
import sys
from importlib import resources
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
import secure_kv
assert "site-packages" in secure_kv.__file__, secure_kv.__file__
config = Config()
config.set_main_option("script_location", str(resources.files("secure_kv.sql") / "migrations"))
engine = sa.create_engine(sys.argv[1])
with engine.begin() as connection:
    config.attributes["connection"] = connection
    command.upgrade(config, "0001")
engine.dispose()
"""


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``command``; exit with its output if it fails. Returns stdout and stderr together
    (the CLI writes data to stdout and its messages to stderr)."""
    printable = " ".join(str(part) if "\n" not in str(part) else "<script>" for part in command)
    print(f"wheel-check: $ {printable}", file=sys.stderr, flush=True)
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"wheel-check: failed ({done.returncode}): {printable}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def wheel_files(wheel: Path) -> dict[str, str]:
    """Name -> sha256 of every file in a wheel, but RECORD (which lists those hashes)."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if not name.endswith(".dist-info/RECORD")
        }


def tracked_package_files() -> set[str]:
    listed = run("git", "ls-files", "secure_kv", cwd=ROOT).split()
    return {name for name in listed if not name.endswith((".pyc", ".gitignore"))}


def build(dist: Path) -> tuple[Path, Path]:
    shutil.rmtree(dist, ignore_errors=True)
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)  # sdist, then the wheel from it
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist / "from-checkout", ROOT)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    (direct,) = (dist / "from-checkout").glob("*.whl")
    from_sdist, from_checkout = wheel_files(wheel), wheel_files(direct)
    if from_sdist != from_checkout:
        differ = sorted(set(from_sdist.items()) ^ set(from_checkout.items()))
        sys.exit(f"wheel-check: the wheel built from the sdist differs from the checkout's: {differ}")
    missing = [name for name in MUST_SHIP if name not in from_sdist]
    if (ROOT / ".git").exists():
        missing += sorted(tracked_package_files() - set(from_sdist))
    if missing:
        sys.exit(f"wheel-check: the wheel lacks {missing}")
    print(f"wheel-check: {wheel.name}: {len(from_sdist)} files, same from the sdist", file=sys.stderr)
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    return sdist, wheel


def try_installed(wheel: Path, python: str, work: Path) -> None:
    venv = work / "venv"
    run(python, "-m", "venv", venv)
    bin_dir = venv / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", f"{wheel}[report]")
    cli = bin_dir / "secure-kv"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SECURE_KV_")}
    env.update({"SECURE_KV_KEY_PROVIDER": "env", "PYTHONDONTWRITEBYTECODE": "1"})
    home = work / "home"
    home.mkdir()
    env["HOME"] = str(home)  # the default store and keyring land here, never in the user's

    demo = run(cli, "demo", cwd=home, env=env)
    if "demo passed" not in demo:
        sys.exit(f"wheel-check: secure-kv demo said: {demo}")
    env["SECURE_KV_MASTER_KEY"] = run(cli, "keygen", cwd=home, env=env).split()[0]

    env["SECURE_KV_DATABASE_URL"] = f"sqlite:///{work / 'new.db'}"
    created = run(cli, "init", cwd=home, env=env)
    if "created the schema" not in created:
        sys.exit(f"wheel-check: init on a new SQLite file said: {created}")

    old = f"sqlite:///{work / 'old.db'}"
    run(bin_dir / "python", "-c", AT_REVISION_0001, old, cwd=home, env=env)
    env["SECURE_KV_DATABASE_URL"] = old
    upgraded = run(cli, "init", cwd=home, env=env)
    if "upgraded the schema from 0001" not in upgraded:
        sys.exit(f"wheel-check: init on a revision-0001 database said: {upgraded}")

    page = run(cli, "audit", "report", "--format", "html", cwd=home, env=env)
    if "<!DOCTYPE html>" not in page or "Content-Security-Policy" not in page:
        sys.exit("wheel-check: audit report --format html gave no page")

    completion = run(cli, cwd=home, env={**env, "_SECURE_KV_COMPLETE": "bash_source"})
    if "_SECURE_KV_COMPLETE=bash_complete" not in completion:
        sys.exit(f"wheel-check: no bash completion script: {completion[:200]}")
    print("wheel-check: the installed wheel ran demo, init, the 0001 upgrade, the report", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the fresh venv")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    _, wheel = build(args.dist)
    with tempfile.TemporaryDirectory(prefix="secure-kv-wheel-") as tmp:
        try_installed(wheel, args.python, Path(tmp))
    print("wheel-check: ok", file=sys.stderr)


if __name__ == "__main__":
    main()
