package supervisor

import (
	"testing"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
)

func TestChannelConfigPolicy(t *testing.T) {
	cfg, err := config.Parse("agent.hcl", []byte(`
channel "qga" {
  method  = "virtio-serial"
  dialect = "qga"
}
channel "local" {
  method  = "unix-listen"
  dialect = "qga"
  allow   = { "guest-ping" = ["*"] }
}
command_monitor {
  enabled         = true
  request_timeout = "2500ms"
}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ExpandCommandMonitor()
	qga, local, monitor := channelConfig(cfg.Channels[0]), channelConfig(cfg.Channels[1]), channelConfig(cfg.Channels[2])
	if qga.HasPolicy || len(qga.Policy) != 0 || qga.RequestTimeoutMs != 0 {
		t.Errorf("the host's channel got a policy: %v", qga)
	}
	if !local.HasPolicy || len(local.Policy) != 1 || local.Policy[0].Command != "guest-ping" || local.Policy[0].Callers[0] != "*" {
		t.Errorf("local channel policy: %v", local.Policy)
	}
	if !monitor.HasPolicy || monitor.Dialect != "monitor" || monitor.RequestTimeoutMs != 2500 {
		t.Errorf("monitor channel: %v", monitor)
	}
	if monitor.Policy[0].Command != "*" || monitor.Policy[0].Callers[0] != "root" || len(monitor.Policy) != 8 {
		t.Errorf("monitor's default policy: %v", monitor.Policy)
	}
}
