"""The image's manifest (SBOM): every Debian package and Python wheel, as JSON, text and CycloneDX.

Pure: dpkg's status file and the wheel list in, documents out.  Three forms
for three readers — ``manifest.json`` for our tools and tests, ``manifest.txt``
for a security reviewer with a pager, ``sbom.cdx.json`` (CycloneDX 1.5) for
vulnerability scanners that take an SBOM.  All are deterministic: sorted,
no wall-clock time (the build time is ``SOURCE_DATE_EPOCH``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = [
    "DebPackage",
    "cyclonedx",
    "iso_time",
    "parse_dpkg_status",
    "render_json",
    "render_text",
]

FORMAT = "renkei-image-manifest/1"


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "source": self.source,
            "source_version": self.source_version,
        }


def parse_dpkg_status(text: str) -> list[DebPackage]:
    """Installed packages from ``/var/lib/dpkg/status`` (``Status: install ok installed`` only).

    ``Source:`` may be absent (source name = package name), a name, or
    ``name (version)`` when the binary's version differs from the source's.
    """
    packages = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status") != "install ok installed" or "Package" not in fields:
            continue
        version = fields["Version"]
        source, source_version = fields.get("Source", fields["Package"]), version
        match = re.fullmatch(r"(\S+) \((\S+)\)", source)
        if match:
            source, source_version = match.groups()
        packages.append(
            DebPackage(fields["Package"], version, fields["Architecture"], source, source_version)
        )
    return sorted(packages, key=lambda p: (p.name, p.architecture))


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_json(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def render_text(manifest: dict) -> bytes:
    """The reviewer's page: what, from where, signed by whom, then every component."""
    image, agent, build, key = (
        manifest["image"],
        manifest["agent"],
        manifest["build"],
        manifest["signing_key"],
    )
    lines = [
        f"renkei appliance image {image['version']} (Debian {image['suite']}, {image['architecture']})",
        "",
        f"Agent:      renkei {agent['version']} in {agent['release_dir']}",
        f"Built:      {build['time']} (SOURCE_DATE_EPOCH={build['source_date_epoch']})",
        f"Source:     git {build['git_commit'] or 'unknown'}{' (uncommitted changes)' if build['git_dirty'] else ''}",
        f"Signed by:  Ed25519 {key['fingerprint']}"
        + ("  ** DEVELOPMENT KEY: not for distribution **" if key["dev"] else ""),
        "Mirrors:",
        *(f"  {m}" for m in build["mirrors"]),
        "",
        "Artefacts",
    ]
    for artefact in manifest["artefacts"]:
        lines.append(f"  {artefact['name']}  {artefact['size']} bytes  sha256:{artefact['sha256']}")
    debs = manifest["debian_packages"]
    lines += ["", f"Debian packages ({len(debs)})"]
    widths = [
        max([len(h)] + [len(p[k]) for p in debs])
        for h, k in (("name", "name"), ("version", "version"), ("arch", "architecture"))
    ]
    header = ("name", "version", "arch", "source")
    lines.append(
        "  " + "  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=True)).rstrip()
    )
    for p in debs:
        source = (
            p["source"]
            if p["source_version"] == p["version"]
            else f"{p['source']} ({p['source_version']})"
        )
        cells = (p["name"], p["version"], p["architecture"], source)
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(cells, [*widths, 0], strict=True)).rstrip()
        )
    wheels = manifest["python_wheels"]
    lines += ["", f"Python wheels in {agent['release_dir']} ({len(wheels)})"]
    nw = max(len(w["name"]) for w in wheels)
    vw = max(len(w["version"]) for w in wheels)
    for w in wheels:
        lines.append(
            f"  {w['name'].ljust(nw)}  {w['version'].ljust(vw)}  {w['origin'].ljust(6)}  sha256:{w['sha256']}"
        )
    lines += [
        "",
        "origin: pypi = the file from PyPI, hash-checked against appliance/image/requirements.lock;",
        "        sdist = built in this run from the hash-checked sdist; source = built from this tree.",
    ]
    return ("\n".join(lines) + "\n").encode()


def _deb_purl(p: dict) -> str:
    purl = f"pkg:deb/debian/{p['name']}@{quote(p['version'], safe='.-_~')}?arch={p['architecture']}&distro=debian-12"
    if p["source"] != p["name"]:
        purl += f"&upstream={quote(p['source'], safe='.-_~')}"
    return purl


def cyclonedx(manifest: dict) -> bytes:
    """A CycloneDX 1.5 JSON SBOM of the same content (serial number derived from it, not random)."""
    image = manifest["image"]
    components = []
    for p in manifest["debian_packages"]:
        components.append(
            {
                "type": "library",
                "bom-ref": _deb_purl(p),
                "name": p["name"],
                "version": p["version"],
                "purl": _deb_purl(p),
            }
        )
    for w in manifest["python_wheels"]:
        purl = f"pkg:pypi/{w['name']}@{quote(w['version'], safe='.-_~')}"
        components.append(
            {
                "type": "library",
                "bom-ref": purl,
                "name": w["name"],
                "version": w["version"],
                "purl": purl,
                "hashes": [{"alg": "SHA-256", "content": w["sha256"]}],
            }
        )
    body = json.dumps(components, sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"renkei-image:{image['version']}:{digest}")
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": manifest["build"]["time"],
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "appliance.image",
                        "version": manifest["agent"]["version"],
                    }
                ]
            },
            "component": {
                "type": "operating-system",
                "bom-ref": "renkei-appliance",
                "name": "renkei-appliance",
                "version": image["version"],
                "description": f"renkei appliance root file system (Debian {image['suite']}, {image['architecture']})",
            },
        },
        "components": components,
    }
    return (json.dumps(bom, indent=2) + "\n").encode()
