# /etc/guest-agent/agent.hcl: configuration of guest-agent (agent.hcl(5)).
#
# Every option is shown commented out with its default value: uncomment and
# change what you need, then `systemctl restart guest-agent`. Flags on the
# command line (guest-agent(8), qemu-ga's) win over this file;
# `guest-agent config dump` prints the configuration in effect.
#
# Lines starting with "#" followed directly by a word are options; lines
# starting with "# " explain them.

# Kept across reboots: file-handle counter, plugin info cache. May lie on a
# filesystem the guest freezes, so nothing needed while frozen lives here.
#state_dir = "/var/lib/guest-agent"

# A tmpfs: plugin sockets and the frozen flags (never frozen, emptied by a
# reboot, kept across restarts of the service within one boot).
#runtime_dir = "/run/guest-agent"

# Plugin directories, searched in order after --plugin-dir and the directory
# of guest-agent (the first holding a name wins). They are followed while the
# agent runs: a plugin installed, removed or upgraded there is taken up,
# dropped or restarted on its new binary, without restarting the agent.
#plugin_dirs = ["/usr/lib/guest-agent/plugins", "/etc/guest-agent/plugins.d"]

# trace, debug, info, warn or error. Under systemd the journal keeps the
# lines (journalctl -u guest-agent); logfile writes them to a file instead.
#log_level = "info"
#logfile = ""
#pidfile = ""

# Command plugins start on their first command: plugins nobody calls cost
# no memory.
#lazy_start = true

# A command plugin started by a command leaves when it has had nothing to
# do this long, unless it holds something a later command needs (a running
# or uncollected guest-exec, an open file handle, a freeze, a nova key);
# its next command starts it again. "off": plugins stay once started.
#plugin_idle_exit = "30s"

# go-plugin's AutoMTLS on each plugin connection. Off: the plugin sockets
# lie in the root-only runtime directory; in a small guest the certificates
# cost about a second of boot per pair of plugins.
#plugin_tls = false

# Cap of the delay between restarts of a plugin that keeps crashing (the
# first three crashes within 30 s restart at once).
#restart_backoff_max = "5s"

# Limits on what a host can make the guest allocate.
#limits {
#  # One request (qemu-ga: 64 MiB); a larger one gets an error, the channel
#  # goes on.
#  max_request_bytes = 67108864
#  # One command.
#  command_timeout = "10m"
#  # Concurrent sessions per channel, concurrent commands per session.
#  max_sessions = 64
#  max_in_flight = 64
#  # One guest-file-read batch read before the host asks (two in flight per
#  # session); -1: no read-ahead.
#  read_ahead_max_bytes = 1048576
#  # The agent thaws a freeze that lasts longer, and logs why; "off": never.
#  fsfreeze_max = "10m"
#  # Bytes held for one session, and for all sessions of a channel: requests
#  # queued or running, replies waiting or being written, the partial
#  # request. Over it a session reads nothing more until its replies went
#  # out.
#  session_memory_max = 201326592
#  channel_memory_max = 536870912
#  # A peer that reads nothing of a reply this long: socket closed,
#  # virtio-serial reply dropped (the host resyncs); "off": none.
#  write_timeout = "60s"
#  # A request whose next bytes do not come this long is discarded with an
#  # error; "off": none.
#  request_idle_timeout = "30s"
#}

# Channels: an exchange method paired with a parser dialect. Without any
# channel block the agent serves the one its flags describe (default: the
# host's virtio-serial port, as below). Declaring channels here replaces
# that default: keep the "qga" channel when you add others.
#channel "qga" {
#  method = "virtio-serial"
#  path = "/dev/virtio-ports/org.qemu.guest_agent.0"
#  dialect = "qga"
#  # Commands disabled on this channel, or the only ones enabled (qemu-ga's
#  # --block-rpcs and --allow-rpcs; `guest-agent -b help` lists them all).
#  block_rpcs = []
#  allow_rpcs = []
#  # true: thaw when the host that froze the guest goes away.
#  thaw_on_disconnect = false
#  options = {
#    # qemu-ga's -r: wait for the port to appear instead of failing.
#    retry_path = false
#    # Give the port to the parser, which then follows host connects
#    # itself: the exchange is stopped (one process less, about 16 MiB).
#    hand_over_port = true
#  }
#}
#
# An example (not a default): a local socket for in-guest callers beside the
# host's port, limited to a few commands, for members of group adm.
#channel "local" {
#  method = "unix-listen"
#  path = "/run/guest-agent.sock"
#  dialect = "qga"
#  # guest-sync-delimited: the handshake of guestctl and libvirt.
#  allow_rpcs = ["guest-sync-delimited", "guest-sync", "guest-ping", "guest-info", "guest-get-osinfo"]
#  options = {
#    socket_mode = "0660"
#    socket_group = "adm"
#    max_connections = 16
#  }
#}

# Another example: negotiator's host-to-guest port, where the host
# (guestctl negotiator, negotiator-host) calls cmd-exec's list-commands and
# execute; the same as the flags -m virtio-serial -p negotiator-host-to-guest.0
# --dialect negotiator. Written as a block: channel "negotiator" { method =
# "virtio-serial", path = "/dev/virtio-ports/negotiator-host-to-guest.0",
# dialect = "negotiator", allow_rpcs = ["list-commands", "execute"] }.

# negotiator's guest-to-host port held by the agent: programs of the guest
# call the host (guest-agent host list-commands | exec CMD) through socket
# and wait their turn instead of failing with EBUSY on a port that has one
# opener at a time. timeout bounds one call, waiting included; "0": none.
#negotiator_host {
#  enabled = false
#  port    = "/dev/virtio-ports/negotiator-guest-to-host.0"
#  socket  = "/run/guest-agent/negotiator-host.sock"
#  timeout = "10s"
#}

# The command monitor (the Google guest agent's): programs inside the guest
# call the agent's commands through a local socket, one JSON object per
# connection ({"Command": "guest-get-osinfo"}), and shell scripts with
# `guest-agent call NAME [JSON]`. Off by default; one line turns it on:
# command_monitor { enabled = true }. socket_mode and socket_group decide
# who may connect (the Google agent's command_pipe_mode and
# command_pipe_group); allow decides who may call what: a command ("*":
# every one) to its callers ("*": anyone, a user or uid, "@group" or
# "@gid"). The allow shown is the default: anyone reads harmless facts, root
# calls everything. A request must arrive whole within request_timeout.
#command_monitor {
#  enabled = false
#  path = "/run/guest-agent/commands.sock"
#  socket_mode = "0770"
#  socket_group = "root"
#  request_timeout = "10s"
#  max_connections = 16
#  allow = {
#    "*" = ["root"]
#    "guest-ping" = ["*"]
#    "guest-info" = ["*"]
#    "guest-get-osinfo" = ["*"]
#    "guest-get-host-name" = ["*"]
#    "guest-get-timezone" = ["*"]
#    "guest-get-load" = ["*"]
#    "guest-network-get-interfaces" = ["*"]
#  }
#}

# Per plugin: disabled = true ignores an installed plugin; checksum pins its
# binary's SHA-256 (sha256sum /usr/lib/guest-agent/plugins/guest-agent-NAME:
# a binary that differs is refused). Unknown options are refused by each
# plugin, so a typo does not silently leave a limit off.

# guest-agent-plugin-files: guest-file-* (README of cmd-files).
#plugin "cmd-files" {
#  disabled = false
#  options = {
#    # Files open at once; 0: no limit.
#    max_handles = 64
#    # Unset: any path. Set, e.g. ["/srv/exchange"]: only paths beneath
#    # these roots (created by root: install -d -m 0755 /srv/exchange).
#    # allowed_paths = ["/srv/exchange"]
#    allow_unsafe_roots = false
#  }
#}

# guest-agent-plugin-exec: guest-exec, guest-exec-status and negotiator's
# user-defined commands (README of cmd-exec).
#plugin "cmd-exec" {
#  options = {
#    # Bytes kept per captured stream of one guest-exec (qemu-ga's).
#    max_output_bytes = 16777216
#    # How long a finished process's status and output wait for
#    # guest-exec-status.
#    status_retention = "10m"
#    # Children running at once.
#    max_concurrent = 64
#    # Unset: any program. Set: only these, compared the way the kernel
#    # finds them; env then may set only allowed_env's variables.
#    # allowed_paths = ["/usr/bin/systemctl"]
#    # allowed_env = ["PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "HOME", "USER", "LOGNAME"]
#    # Users a guest-exec may run as (its "user" argument); unset: any.
#    # allowed_users = ["root", "www-data"]
#    # A host reading a command's output with guest-exec-read holds the
#    # command back when max_output_bytes are waiting; silent this long,
#    # it is taken for gone and the output is dropped past the cap again.
#    stream_idle = "30s"
#    # Directory of negotiator-style commands ("": none; the built-in
#    # find-* commands remain).
#    commands_dir = "/usr/lib/negotiator/commands"
#    # One negotiator execute command (negotiator's timeout); 0: none.
#    execute_timeout = "10s"
#    # false (qemu-ga's way): children are left running when the plugin
#    # stops; under guest-agent.service they are then killed with the rest
#    # of the unit once the agent has exited (KillMode=mixed). true: they
#    # get SIGTERM, then SIGKILL after 2 s, before the plugin exits.
#    kill_on_exit = false
#  }
#}

# guest-agent-plugin-system: shutdown, fsfreeze, time, users, disks, ssh
# keys, passwords... (README of cmd-system).
#plugin "cmd-system" {
#  options = {
#    # Executables run with "freeze" in lexical order before the filesystems
#    # are frozen, with "thaw" in reverse order after they are thawed; ""
#    # disables the directory. qemu-ga's -F script: fsfreeze_hook.
#    fsfreeze_hook_dir = "/etc/guest-agent/freeze.d"
#    fsfreeze_hook_timeout_seconds = 60
#    # fsfreeze_hook = "/etc/qemu/fsfreeze-hook"
#    # A helper (shutdown, hwclock, chpasswd...) running longer is killed.
#    helper_timeout_seconds = 300
#    max_helper_output_bytes = 65536
#    # Largest authorized_keys, os-release, utmp, passwd or localtime read.
#    max_file_bytes = 16777216
#    shutdown_path = "/sbin/shutdown"
#    poweroff_path = "/sbin/poweroff"
#    halt_path = "/sbin/halt"
#    reboot_path = "/sbin/reboot"
#    hwclock_path = "/sbin/hwclock"
#    chpasswd_path = "chpasswd"
#    root = "/"
#    proc_root = "/proc"
#    sys_root = "/sys"
#  }
#}

# guest-agent-plugin-network: guest-network-get-interfaces and -route; no
# options.
#plugin "cmd-network" {
#  disabled = false
#}

# guest-agent-plugin-nova: OpenStack nova-agent's commands (README of
# cmd-nova).
#plugin "cmd-nova" {
#  options = {
#    # The tree written to (passwords, injected files, network files).
#    root = "/"
#    # The account "password" sets.
#    user = "root"
#    # Largest agentupdate download.
#    max_download_bytes = 268435456
#    # agentupdate is refused until agent_binary is set.
#    # agent_binary = "/usr/sbin/guest-agent"
#    # agent_restart_command = ["systemctl", "restart", "guest-agent-xen"]
#  }
#}
