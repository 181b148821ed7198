#!/bin/sh
# rpm scriptlet of a guest-agent plugin package (postinstall, postremove):
# the agents learn their plugins when they start, so running ones are
# restarted to serve exactly the installed plugins' commands.
if [ -d /run/systemd/system ]; then
	systemctl try-restart guest-agent.service guest-agent-xen.service || true
fi
exit 0
