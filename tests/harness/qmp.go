package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP runs one command on a QEMU monitor socket (-qmp unix:PATH,server=on):
// the capabilities handshake, then execute with args; events met on the
// way are skipped.
func QMP(socket, execute string, args any) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // the greeting
		return nil, err
	}
	send := func(cmd string, args any) (json.RawMessage, error) {
		req := map[string]any{"execute": cmd}
		if args != nil {
			req["arguments"] = args
		}
		b, _ := json.Marshal(req)
		if _, err := c.Write(append(b, '\n')); err != nil {
			return nil, err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return nil, err
			}
			var m struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class string `json:"class"`
					Desc  string `json:"desc"`
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				return nil, fmt.Errorf("qmp %q: %v", line, err)
			}
			switch {
			case m.Event != "":
				continue
			case m.Error != nil:
				return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
			default:
				return m.Return, nil
			}
		}
	}
	if _, err := send("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return send(execute, args)
}
