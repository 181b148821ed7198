package domains

import (
	"encoding/xml"
	"fmt"
)

// Domain is what guest discovery needs of a libvirt domain's XML.
type Domain struct {
	Name string
	// Running is true when the XML describes a running domain: libvirt
	// gives a running domain an id attribute (virsh dumpxml) and wraps a
	// running domain's status file in <domstatus state=...>.
	Running  bool
	Channels []Channel
}

// Channel is one <channel type='unix'> of a domain.
type Channel struct {
	Target string // <target name=...>, e.g. org.qemu.guest_agent.0
	Socket string // <source path=...>
	State  string // <target state=...>: connected, disconnected, or empty
}

// Channel returns the unix channel whose target name is target.
func (d Domain) Channel(target string) (Channel, bool) {
	for _, c := range d.Channels {
		if c.Target == target {
			return c, true
		}
	}
	return Channel{}, false
}

type xmlDomain struct {
	ID       string `xml:"id,attr"`
	Name     string `xml:"name"`
	Channels []struct {
		Type   string `xml:"type,attr"`
		Source struct {
			Path string `xml:"path,attr"`
		} `xml:"source"`
		Target struct {
			Name  string `xml:"name,attr"`
			State string `xml:"state,attr"`
		} `xml:"target"`
	} `xml:"devices>channel"`
}

// ParseDomainXML reads a domain's XML as virsh dumpxml prints it
// (<domain>) or as libvirt keeps a running domain's status
// (<domstatus><domain>...</domain></domstatus>).
func ParseDomainXML(data []byte) (Domain, error) {
	var root struct {
		XMLName xml.Name
		xmlDomain
		State  string    `xml:"state,attr"`
		Status xmlDomain `xml:"domain"`
	}
	if err := xml.Unmarshal(data, &root); err != nil {
		return Domain{}, fmt.Errorf("domain XML: %w", err)
	}
	var x xmlDomain
	var d Domain
	switch root.XMLName.Local {
	case "domain":
		x = root.xmlDomain
		d.Running = x.ID != "" && x.ID != "-1"
	case "domstatus":
		x = root.Status
		d.Running = root.State != "" && root.State != "shutoff"
	default:
		return Domain{}, fmt.Errorf("domain XML: root element <%s>, want <domain> or <domstatus>", root.XMLName.Local)
	}
	if x.Name == "" {
		return Domain{}, fmt.Errorf("domain XML: no <name>")
	}
	d.Name = x.Name
	for _, c := range x.Channels {
		if c.Type != "unix" || c.Target.Name == "" {
			continue
		}
		d.Channels = append(d.Channels, Channel{Target: c.Target.Name, Socket: c.Source.Path, State: c.Target.State})
	}
	return d, nil
}

// guest turns a parsed domain into the Guest of channel target.
func (d Domain) guest(target string) Guest {
	g := Guest{Name: d.Name}
	if c, ok := d.Channel(target); ok {
		g.Socket, g.State = c.Socket, c.State
	}
	return g
}
