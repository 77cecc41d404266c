"""``python -m appliance.image release``: its parts on small trees, then one real bundle, installed.

The slow test builds a real release (``--version 0.2.0``: this tree's wheels,
hash-checked, in a relocated venv), publishes it with the server's own code,
and lets ``renkei-agent update`` install and self-test it: the self-test is the
*bundle's* interpreter and code making the signed ping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.image.errors import BuildError
from appliance.image.release import find_build_path, relocate, set_version, write_bundle
from server.update_bundle import read_release
from tests.agent.update_support import UpdateWorld, release_tree_ok, run_update

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/renkei/releases/0.2.0"


# --- the parts -----------------------------------------------------------------------------------


def _fake_venv(venv: Path) -> None:
    """What `python -m venv` and pip leave that names the venv's folder."""
    (venv / "bin").mkdir(parents=True)
    site = venv / "lib/python3.11/site-packages"
    (site / "renkei-0.2.0.dist-info").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = python3 -m venv {venv}\n")
    (venv / "bin/renkei-agent").write_text(f"#!{venv}/bin/python\nimport sys\n")
    (venv / "bin/renkei-agent").chmod(0o755)
    (venv / "bin/activate").write_text(f'VIRTUAL_ENV="{venv}"\n')
    (venv / "bin/python3").symlink_to("/usr/bin/python3")
    (venv / "bin/python").symlink_to("python3")
    (site / "renkei-0.2.0.dist-info/RECORD").write_text(
        "../../../bin/renkei-agent,sha256=stale,10\nrenkei/__init__.py,sha256=x,1\n"
    )


def test_relocation_rewrites_every_mention_of_the_build_folder(tmp_path):
    venv = tmp_path / "work" / "venv"
    _fake_venv(venv)
    assert find_build_path(venv, str(venv)) != []
    changed = relocate(venv, PREFIX)
    assert changed == ["bin/activate", "bin/renkei-agent", "pyvenv.cfg"]
    assert find_build_path(venv, str(venv)) == []
    script = (venv / "bin/renkei-agent").read_bytes()
    assert script.startswith(f"#!{PREFIX}/bin/python\n".encode())
    assert os.readlink(venv / "bin/python3") == "/usr/bin/python3", "links left alone"
    record = (venv / "lib/python3.11/site-packages/renkei-0.2.0.dist-info/RECORD").read_text()
    digest = hashlib.sha256(script).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert f"../../../bin/renkei-agent,sha256={expected},{len(script)}" in record
    assert "renkei/__init__.py,sha256=x,1" in record


def test_the_bundle_is_reproducible_and_everything_is_under_release(tmp_path):
    tree = tmp_path / "tree"
    _fake_venv(tree)
    (tree / "release.json").write_text("{}")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_bundle(tree, first, 1_700_000_000)
    os.utime(tree / "pyvenv.cfg", (1_800_000_000, 1_800_000_000))  # later than the epoch
    write_bundle(tree, second, 1_700_000_000)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "release" and all(n.startswith("release/") for n in names[1:])
    assert names == ["release"] + sorted(names[1:])
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    assert max(m.mtime for m in members) <= 1_700_000_000
    modes = {m.name: m.mode for m in members if m.isreg()}
    assert modes["release/bin/renkei-agent"] == 0o755 and modes["release/pyvenv.cfg"] == 0o644


def test_set_version_writes_both_version_lines(tmp_path):
    (tmp_path / "appliance/agent").mkdir(parents=True)
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = renkei\nversion = 0.1.0\n")
    init = tmp_path / "appliance/agent/__init__.py"
    init.write_text('"""doc"""\n\n__version__ = "0.1.0"\n')
    set_version(tmp_path, "0.2.0rc1")
    assert "version = 0.2.0rc1" in (tmp_path / "setup.cfg").read_text()
    assert '__version__ = "0.2.0rc1"' in init.read_text()
    with pytest.raises(BuildError) as caught:
        set_version(tmp_path, "v0.3")
    assert caught.value.code == "build.config"


def test_a_bad_version_option_is_a_usage_error_before_any_build(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.image", "release", "--version", "latest", "--json"]
        + ["--out", str(tmp_path), "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["code"] == "build.config"
    assert list(tmp_path.glob("*.tar.gz")) == []


# --- a real release ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("release")
    result = subprocess.run(
        [sys.executable, "-m", "appliance.image", "release", "--version", "0.2.0", "--json"]
        + ["--out", str(out), "--work-dir", str(out), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["ok"] and document["version"] == "0.2.0"
    return Path(document["bundle"])


@pytest.mark.slow
def test_a_real_release_is_what_the_server_publishes_and_the_agent_installs(
    real_bundle, tmp_path, ntp_server, lgwan_dns
):
    release = read_release(real_bundle)  # the server's own check before it signs
    assert (release.version, release.prefix) == ("0.2.0", PREFIX)
    with tarfile.open(real_bundle) as tar:
        agent = tar.extractfile("release/bin/renkei-agent")
        assert agent is not None and agent.readline() == f"#!{PREFIX}/bin/python\n".encode()
        document = json.loads(tar.extractfile("release/release.json").read())  # type: ignore[union-attr]
    assert document == {"format": 1, "version": "0.2.0", "python": "3.11", "prefix": PREFIX}
    world = UpdateWorld(tmp_path / "world").start()
    try:
        term = world.terminal("t1", ntp=ntp_server.address, dns=lgwan_dns.address)
        world.publish(real_bundle)
        code, report, err = run_update(term)
        assert code == 0, err
        assert report["installed"] == "0.2.0"
        ping = report["self_test"][1]
        assert ping["answer"]["agent_version"] == "renkei-agent/0.2.0"
        release_tree_ok(term.releases, "0.2.0")
        # The installed release runs from its own venv, not this test's.
        tree = term.releases.path("0.2.0")
        where = subprocess.run(
            [
                str(tree / "bin/python"),
                "-c",
                "import appliance.agent, sys; print(appliance.agent.__file__, sys.prefix)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            cwd=tmp_path,  # not this source tree: -c puts the working folder first on sys.path
        )
        assert where.returncode == 0, where.stderr
        module, prefix = where.stdout.split()
        assert module.startswith(str(tree)) and prefix == str(tree)
    finally:
        world.close()
