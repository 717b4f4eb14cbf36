"""Debian as the recipe names it: the suite, the mirror, and kernel packages fetched from it.

The image must not depend on the host's distribution: the suite is in the recipe
(``vmtests/images/debian-suite.txt``) and the mirror comes from ``$VMTEST_DEBIAN_MIRROR`` (and
``$VMTEST_DEBIAN_SECURITY_MIRROR``). Only when they are unset do the host's apt sources serve,
and then only to *find* a mirror, never to choose the suite. A kernel .deb is fetched with
``apt-get download`` and a private apt state: no root, no host apt state; apt is on every host
that has mmdebstrap, which depends on it.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmtests.vm.errors import KernelError

MIRROR_ENV = "VMTEST_DEBIAN_MIRROR"
SECURITY_ENV = "VMTEST_DEBIAN_SECURITY_MIRROR"
APT_DIR_ENV = "VMTEST_HOST_APT_DIR"  # where the host's apt sources are read (tests, demos)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_DEBIAN_SUITES = ("bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing")


@dataclass(frozen=True)
class Mirrors:
    """Where packages come from: not part of any cache key (it is where, not what)."""

    main: str
    security: str | None  # None: a stable suite's security updates are left out
    source: str  # "environment" or "host apt sources": said in the build log


def apt_entries(apt_dir: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled 'deb' source: deb822 ``*.sources`` and one-line lists."""
    entries: list[tuple[str, list[str]]] = []
    for f in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line[:1] not in ("#", " ", "\t") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in fields.get("types", "").split():
                entries += [(u, fields.get("suites", "").split()) for u in fields["uris"].split()]
    for f in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if f.is_file():
            for line in f.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def choose_mirrors(env: Mapping[str, str], entries: list[tuple[str, list[str]]]) -> Mirrors:
    """The environment's mirror if set, else the first Debian mirror among the host's sources;
    a host without Debian sources (Ubuntu, Fedora, Arch) must set the variable."""
    if env.get(MIRROR_ENV):
        return Mirrors(env[MIRROR_ENV].rstrip("/"), env.get(SECURITY_ENV) or None, "environment")
    main = security = None
    for uri, suites in entries:
        for suite in suites:
            if suite.split("-")[0].split("/")[0] not in _DEBIAN_SUITES:
                continue
            if suite.endswith(("-security", "/updates")):
                security = security or uri.rstrip("/")
            else:
                main = main or uri.rstrip("/")
    if main is None:
        raise KernelError(
            f"no Debian mirror: set {MIRROR_ENV}=URL (and {SECURITY_ENV}=URL for a stable "
            "suite's security updates); the host's apt sources name none"
        )
    return Mirrors(main, env.get(SECURITY_ENV) or security, "host apt sources")


def mirrors() -> Mirrors:
    return choose_mirrors(os.environ, apt_entries(Path(os.environ.get(APT_DIR_ENV, "/etc/apt"))))


def sources(
    suite: str, m: Mirrors, *, signed: bool = True, components: tuple[str, ...] = ("main",)
) -> list[str]:
    """One-line apt sources for a suite: a stable suite means its point release plus -updates
    and -security (today's 6.1 kernel comes from bookworm-security); a backports suite needs its
    base suite for dependencies. ``components``: ``contrib`` too for ZFS (zfs-dkms and
    zfsutils-linux are there, being CDDL)."""
    opt = f"[signed-by={KEYRING}] " if signed and Path(KEYRING).exists() else ""
    base = suite.split("-")[0]
    parts = " ".join(components)
    lines = [f"deb {opt}{m.main} {base} {parts}"]
    if suite == base:
        lines.append(f"deb {opt}{m.main} {base}-updates {parts}")
        if m.security and base not in ("sid", "unstable"):
            lines.append(f"deb {opt}{m.security} {base}-security {parts}")
    elif suite.endswith("-security") and m.security:
        lines.append(f"deb {opt}{m.security} {suite} {parts}")
    else:
        lines.append(f"deb {opt}{m.main} {suite} {parts}")
    return lines


def apt_options(state: Path) -> list[str]:
    """apt options that keep all state under ``state`` and read nothing of the host's apt."""
    opts = {
        "Dir::Etc::SourceList": f"{state}/sources.list",
        "Dir::Etc::SourceParts": f"{state}/empty",
        "Dir::Etc::Preferences": f"{state}/preferences",
        "Dir::Etc::PreferencesParts": f"{state}/empty",
        "Dir::Etc::Parts": f"{state}/empty",
        "Dir::State": f"{state}/state",
        "Dir::State::status": f"{state}/status",
        "Dir::Cache": f"{state}/cache",
        "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
        "APT::Sandbox::User": "_apt" if os.geteuid() == 0 else os.environ.get("USER", "nobody"),
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _apt(argv: list[str], state: Path, cwd: Path | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C", "APT_CONFIG": str(state / "apt.conf")}
    proc = subprocess.run(
        [argv[0], *apt_options(state), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise KernelError(f"{' '.join(argv[:2])} failed: {tail[0]}")
    return proc.stdout


def fetch(suite: str, package: str, m: Mirrors, state: Path, out: Path) -> tuple[Path, str]:
    """Download the real kernel package behind ``package`` (a meta-package) into ``out``.

    Returns the .deb and the package's name. Backports are NotAutomatic, so they are pinned up."""
    for d in ("state/lists/partial", "cache/archives/partial", "empty"):
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "status").write_text("")
    (state / "apt.conf").write_text("")
    (state / "sources.list").write_text("\n".join(sources(suite, m)) + "\n")
    pin = f"Package: *\nPin: release n={suite}\nPin-Priority: 990\n"
    (state / "preferences").write_text(pin if suite.endswith("-backports") else "")
    _apt(["apt-get", "update", "-q"], state)
    depends = _apt(["apt-cache", "depends", "--no-recommends", "--no-suggests", package], state)
    real = re.findall(r"Depends:\s*(linux-image-\d\S*)", depends)
    if len(real) != 1:
        raise KernelError(f"{package} in {suite}: expected one linux-image-VERSION, got {real}")
    out.mkdir(parents=True, exist_ok=True)
    _apt(["apt-get", "download", "-q", real[0]], state, cwd=out)
    debs = sorted(out.glob(f"{real[0]}_*.deb"))
    if not debs:
        raise KernelError(f"apt-get download {real[0]}: no .deb appeared")
    return debs[-1], real[0]


def deb_data(deb: Path) -> tarfile.TarFile:
    """A .deb's data.tar (the .deb is an ar archive), opened without dpkg-deb."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise KernelError(f"{deb}: not a .deb")
    i = 8
    while i + 60 <= len(raw):
        name = raw[i : i + 16].decode().strip().rstrip("/")
        size = int(raw[i + 48 : i + 58].decode().strip())
        body = raw[i + 60 : i + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                proc = subprocess.run(["zstd", "-dcq"], input=body, capture_output=True, check=True)
                body = proc.stdout
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        i += 60 + size + (size & 1)
    raise KernelError(f"{deb}: no data.tar member")


def unpack_kernel(deb: Path, staging: Path) -> str:
    """Extract ``boot/`` and the modules into ``staging/{boot,lib/modules}``; the release.

    6.12's packages put modules under usr/lib/modules (merged /usr), 6.1's under lib/modules."""
    release = None
    with deb_data(deb) as tar:
        for member in tar:
            path = posixpath.normpath("/" + member.name).lstrip("/").removeprefix("usr/")
            if not path.startswith(("boot/", "lib/modules/")):
                continue
            if path.startswith("lib/modules/") and path.count("/") >= 2:
                release = release or path.split("/")[2]
            dest = staging / path
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                dest.parent.mkdir(parents=True, exist_ok=True)
                f = tar.extractfile(member)
                assert f is not None
                dest.write_bytes(f.read())
    if release is None:
        raise KernelError(f"{deb.name}: no lib/modules/RELEASE in the package")
    return release


__all__ = [
    "MIRROR_ENV",
    "SECURITY_ENV",
    "Mirrors",
    "apt_entries",
    "choose_mirrors",
    "deb_data",
    "fetch",
    "mirrors",
    "sources",
    "unpack_kernel",
]
