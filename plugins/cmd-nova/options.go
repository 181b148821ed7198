package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// options is the plugin's block of the agent configuration:
//
//	plugin "cmd-nova" { options = { root = "/", user = "root", ... } }
type options struct {
	// Root is the directory the guest's files are read from and written
	// to: /etc/shadow (password), injected files, the network
	// configuration, /etc/hostname, /etc/hosts, /etc/resolv.conf. Default "/".
	Root string `json:"root"`
	// User is the account whose password "password" sets. Default "root".
	User string `json:"user"`
	// Version is what "version" answers. Default: the agent's build
	// version. nova compares agent versions as dotted numbers, so set it
	// when agent updates are managed by nova.
	Version string `json:"version"`

	// XenstorePath is where resetnetwork reads vm-data from: the xenbus
	// device or xenstored's socket. Default: /dev/xen/xenbus,
	// /proc/xen/xenbus, then $XENSTORED_PATH or /var/run/xenstored/socket.
	XenstorePath string `json:"xenstore_path"`
	// XenstoreDomid, when set, reads that domain's vm-data (through
	// GET_DOMAIN_PATH) instead of the connection's own domain.
	XenstoreDomid sdk.FlexString `json:"xenstore_domid"`
	// SysfsRoot is where interfaces are listed and matched by MAC
	// (class/net/<if>/address). Default: <root>/sys.
	SysfsRoot string `json:"sysfs_root"`
	// NetworkBackend picks the writer: ifupdown, netplan, networkmanager,
	// networkd or ifcfg. Default: detected from the files under root.
	NetworkBackend string `json:"network_backend"`
	// ApplyCommand is run (argv, no shell) after resetnetwork wrote the
	// files, e.g. ["netplan", "apply"]. Unset: when root is "/", the
	// backend's own (netplan apply, networkctl reload, systemctl restart
	// networking / NetworkManager / network); under another root nothing.
	// An empty list applies nothing.
	ApplyCommand []string `json:"apply_command"`
	// SetKernelHostname makes resetnetwork call sethostname(2) as well as
	// write /etc/hostname. Default: true when root is "/".
	SetKernelHostname *bool `json:"set_kernel_hostname"`

	// AgentBinary is the file agentupdate replaces. Empty: agentupdate is
	// refused.
	AgentBinary string `json:"agent_binary"`
	// AgentRestartCommand is run (argv, no shell) after a successful
	// update, e.g. ["systemctl", "restart", "guest-agent"]. Empty: none.
	AgentRestartCommand []string `json:"agent_restart_command"`
	// MaxDownloadBytes bounds an update download. Default 256 MiB.
	MaxDownloadBytes int64 `json:"max_download_bytes"`
	// DownloadTimeout bounds an update download, e.g. "5m". Default: the
	// command's own deadline.
	DownloadTimeout string `json:"download_timeout"`

	downloadTimeout time.Duration
}

func defaultOptions() options {
	return options{Root: "/", User: "root", MaxDownloadBytes: 256 << 20}
}

// parseOptions decodes the options, refusing unknown ones: a typo in the
// configuration must not silently write to the real root.
func parseOptions(raw []byte) (options, error) {
	o := defaultOptions()
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o); err != nil {
			return o, fmt.Errorf("cmd-nova options: %w", err)
		}
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if !filepath.IsAbs(o.Root) {
		return o, fmt.Errorf("cmd-nova options: root %q is not an absolute path", o.Root)
	}
	o.Root = filepath.Clean(o.Root)
	if o.User == "" {
		o.User = "root"
	}
	if o.SysfsRoot == "" {
		o.SysfsRoot = filepath.Join(o.Root, "sys")
	}
	if o.SetKernelHostname == nil {
		v := o.Root == "/"
		o.SetKernelHostname = &v
	}
	switch o.NetworkBackend {
	case "", backendIfupdown, backendNetplan, backendNM, backendNetworkd, backendIfcfg:
	default:
		return o, fmt.Errorf("cmd-nova options: network_backend %q is not one of %s, %s, %s, %s, %s",
			o.NetworkBackend, backendIfupdown, backendNetplan, backendNM, backendNetworkd, backendIfcfg)
	}
	if o.MaxDownloadBytes <= 0 {
		o.MaxDownloadBytes = 256 << 20
	}
	if o.DownloadTimeout != "" {
		d, err := time.ParseDuration(o.DownloadTimeout)
		if err != nil {
			return o, fmt.Errorf("cmd-nova options: download_timeout: %w", err)
		}
		o.downloadTimeout = d
	}
	return o, nil
}

// under returns path p (absolute, as the host or the guest sees it) inside
// root. Cleaning first keeps ".." from climbing out of root.
func (o *options) under(p string) string {
	return filepath.Join(o.Root, filepath.Clean("/"+p))
}
