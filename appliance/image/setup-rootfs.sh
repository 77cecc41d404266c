#!/bin/bash
# renkei: hardening steps run INSIDE the image's root, after appliance/rootfs/ has
# been copied in and before the build's clean-up (apt lists, caches, machine-id).
#
#   chroot ROOT /bin/bash -s < appliance/image/setup-rootfs.sh
#   (optionally with RENKEI_TECHNICIAN_PASSWORD_HASH='$y$…' in the environment)
#
# Most of the hardening is declarative and lives in appliance/rootfs/ (presets,
# sysusers.d, tmpfiles.d, masks as links to /dev/null, mount units, drop-ins);
# this script does only what a file cannot: apply the presets, make the users,
# lock root, switch on pam_access for console logins, drop set-uid bits, remove
# what must not ship (shared SSH host keys, compilers), then check the result.
# It is idempotent: running it twice leaves the same tree.
# What each step is for: docs/image-hardening.md.
#
# needs packages: systemd (systemctl, systemd-sysusers) sudo (visudo) dpkg
#   passwd (usermod, chage) login + libpam-modules (pam_access); and for what the
#   overlay configures: nftables chrony usbguard openssh-server (the LAN drop's
#   sshd only) pcscd fbterm libpam-passwdqc.  The ones the build's list lacked
#   are appended to appliance/image/packages.txt under "hardening/overlay (D)".
set -euo pipefail

log() { echo "setup-rootfs: $*" >&2; }
die() {
    echo "setup-rootfs: ERROR: $*" >&2
    exit 1
}

# --- 0. Refuse to run on the build host -------------------------------------------------
# Locking root and changing PAM on the machine that builds the image would be a
# disaster; the overlay's marker file is the proof we are inside the image.
[ "$(id -u)" = 0 ] || die "must run as root inside the image (chroot)"
grep -qs '^table inet renkei' /etc/nftables.conf \
    || die "/etc/nftables.conf is not renkei's: run inside the image root, after the overlay is copied"
[ ! -d /run/systemd/system ] || die "systemd is running here: this is a booted machine, not an image"

# --- 1. Users and groups -------------------------------------------------------------------
# sysusers.d: renkei-agent, renkei-staff, renkei-update, renkei-tech (made now: step 2
# sets the technician's password).  The folders of tmpfiles.d (/srv/renkei, /var/lib/renkei,
# the technician's home) are made at every boot by systemd-tmpfiles-setup.
systemd-sysusers
# sysusers stamps today's date as the accounts' last password change; the
# image must not depend on the day it was built (reproducible builds).
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    for account in renkei-agent renkei-update renkei-tech; do
        chage --lastday "$((SOURCE_DATE_EPOCH / 86400))" "$account"
    done
fi

# The agent's releases belong to its updater (renkei-update.service): the agent's own
# user runs them but can never change them (docs/terminal-units.md, "The update unit").
chown -R renkei-update:renkei-update /opt/renkei
[ -f /usr/share/renkei/update-root.json ] \
    || die "/usr/share/renkei/update-root.json is missing: the updater would trust nothing"

# --- 2. Passwords --------------------------------------------------------------------------
# root: no password at all, anywhere (sudo by the technician instead).
usermod --lock root >/dev/null
# The technician: a crypt(3) hash from the build configuration, to be changed at
# the first login (so the shared build password stops working on every appliance
# that has been installed).  Without one the account stays locked.
hash="${RENKEI_TECHNICIAN_PASSWORD_HASH:-}"
if [ -n "$hash" ]; then
    case "$hash" in
        '$y$'*'$'*) ;;
        *) die "RENKEI_TECHNICIAN_PASSWORD_HASH must be a yescrypt hash (\$y\$…: mkpasswd -m yescrypt)" ;;
    esac
    usermod --password "$hash" renkei-tech
    # "Must change at the next login" (last change: day 0), with no maximum age:
    # the password never expires by the calendar afterwards (see login.defs below).
    chage --lastday 0 --maxdays -1 renkei-tech
else
    log "RENKEI_TECHNICIAN_PASSWORD_HASH not set: renkei-tech stays locked (no console login)"
    usermod --lock renkei-tech >/dev/null
fi

# --- 3. Console login for the technician only ------------------------------------------
# pam_access with /etc/security/access.d/renkei.conf; Debian's login stack ships
# the line commented out.
pam_login=/etc/pam.d/login
sed -i -E 's/^#[[:space:]]*(account[[:space:]]+required[[:space:]]+pam_access\.so)[[:space:]]*$/\1/' "$pam_login"
grep -Eq '^account[[:space:]]+required[[:space:]]+pam_access\.so' "$pam_login" \
    || die "$pam_login: could not enable pam_access"
# login.defs: new files readable by their group at most; passwords hashed with
# yescrypt (as Debian's pam_unix does; SHA-512 only with many rounds).  No
# periodic password expiry (NIST SP 800-63B 5.1.1.2: change on evidence of
# compromise, not by the calendar): PASS_MAX_DAYS stays Debian's.
set_login_def() {
    # The active line, else Debian's commented sample ("#KEY value"), else append.
    if grep -Eq "^$1[[:space:]]" /etc/login.defs; then
        sed -i -E "s/^$1[[:space:]].*\$/$1\t$2/" /etc/login.defs
    elif grep -Eq "^#$1[[:space:]]" /etc/login.defs; then
        sed -i -E "s/^#$1[[:space:]].*\$/$1\t$2/" /etc/login.defs
    else
        printf '%s\t%s\n' "$1" "$2" >> /etc/login.defs
    fi
    grep -Eq "^$1[[:space:]]+$2\$" /etc/login.defs || die "/etc/login.defs: $1 not set"
}
set_login_def UMASK 027
set_login_def ENCRYPT_METHOD YESCRYPT
set_login_def SHA_CRYPT_MIN_ROUNDS 65536
set_login_def SHA_CRYPT_MAX_ROUNDS 65536

# --- 4. What runs ----------------------------------------------------------------------------
# Presets (usr/lib/systemd/system-preset/): exactly what 10-renkei.preset and
# systemd's own list enable; everything else disabled (99-renkei-default.preset).
systemctl preset-all 2>&1 | sed 's/^/setup-rootfs: preset: /' >&2
# Masks ship as links to /dev/null in the overlay; make sure the copy kept them.
for unit in ssh.service ssh.socket ctrl-alt-del.target; do
    [ "$(readlink "/etc/systemd/system/$unit")" = /dev/null ] \
        || die "$unit is not masked (/etc/systemd/system/$unit must link to /dev/null)"
done

# --- 5. What must not ship -----------------------------------------------------------------
# openssh-server made host keys during the build: every appliance would share
# them.  The LAN drop makes its own key on first start (/etc/renkei/landrop/).
rm -f /etc/ssh/ssh_host_*
# The system sshd's configuration is never used (ssh.service is masked; the LAN
# drop has its own in /etc/renkei/landrop): not readable by others.  No cron in
# the image, but packages ship cron folders: root's only.
[ ! -e /etc/ssh/sshd_config ] || chmod 0600 /etc/ssh/sshd_config
for folder in /etc/cron.d /etc/cron.daily /etc/cron.hourly /etc/cron.weekly /etc/cron.monthly; do
    [ ! -d "$folder" ] || chmod 0700 "$folder"
done
# Debian lets the plugdev group talk to usbguard-daemon; our daemon
# configuration allows root only, and this file would grant plugdev again.
rm -f '/etc/usbguard/IPCAccessControl.d/:plugdev'
# Set-uid/set-gid programs nobody on the appliance needs (dpkg-statoverride, so
# the change is recorded and survives a reinstall of the package).  Left: sudo
# (the technician), passwd, unix_chkpwd (PAM), dbus-daemon-launch-helper.
for prog in /usr/bin/chfn /usr/bin/chsh /usr/bin/gpasswd /usr/bin/newgrp /usr/bin/su \
    /usr/bin/mount /usr/bin/umount /usr/bin/chage /usr/bin/expiry /usr/bin/ssh-agent \
    /usr/lib/openssh/ssh-keysign; do
    [ -e "$prog" ] || continue
    if ! dpkg-statoverride --list "$prog" >/dev/null; then
        dpkg-statoverride --update --add root root 0755 "$prog"
    fi
done
# No compilers or assemblers (lynis HRDN-7222): fail the build if a package
# pulled one in, rather than ship it.
for tool in gcc cc c++ g++ clang tcc as ld gfortran rustc go; do
    if command -v "$tool" >/dev/null 2>&1; then
        die "compiler or assembler '$tool' found in the image ($(command -v "$tool"))"
    fi
done
found=$(find /usr/bin -maxdepth 1 -name '*-linux-gnu-gcc*' -print -quit)
[ -z "$found" ] || die "compiler found in the image: $found"

# --- 6. Modes git cannot carry, then checks ------------------------------------------------
# git records only the executable bit: the overlay's 0600/0440 files arrive 0644.
# usbguard-daemon refuses to start with a rules or configuration file others can
# read; sudo ignores a drop-in that is writable or not 0440.
chmod 0600 /etc/usbguard/usbguard-daemon.conf /etc/usbguard/rules.conf /etc/usbguard/rules.d/*.conf
chmod 0700 /etc/usbguard/rules.d
chmod 0440 /etc/sudoers.d/renkei-console /etc/sudoers.d/renkei-technician
visudo -c -q || die "sudoers does not parse"
log "done"
