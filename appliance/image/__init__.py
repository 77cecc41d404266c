"""The appliance image (issue 8): a reproducible, signed Debian bookworm root file system.

``python -m appliance.image build`` runs mmdebstrap with the package list in
``packages.txt``, installs the agent from wheels built in the same run into
``/opt/renkei/releases/<version>``, lays the ``appliance/rootfs/`` overlay over
it, runs the hardening script, and writes a tarball, a SquashFS, a manifest
(SBOM), ``SHA256SUMS`` and its Ed25519 signature.  ``verify`` checks them.
How and why: docs/image.md.
"""
