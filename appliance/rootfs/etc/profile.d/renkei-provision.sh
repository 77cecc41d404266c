# renkei: at login, tell the technician which provisioning step is next
# (docs/provisioning.md).  Nothing is printed once the appliance is enrolled.
if [ ! -e /etc/renkei/agent.toml ]; then
    if [ -e /etc/renkei/provision.toml ]; then
        echo "renkei: configured, not enrolled yet: sudo renkei-provision enroll --token TOKEN --ca-file CA.pem"
    else
        echo "renkei: not provisioned yet: sudo renkei-provision configure (docs/provisioning.md)"
    fi
fi
