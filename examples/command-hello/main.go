// Command guest-agent-cmd-hello adds a "guest-hello" command to the agent:
// a command plugin, written the way a third party writes one, against the
// shared module only.
package main

import (
	"context"
	"fmt"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func main() {
	sdk.ServeCommands(&sdk.CommandPlugin{
		Name:    "cmd-hello",
		Version: "1.0.0",
		Commands: []sdk.Command{{
			Name:        "guest-hello",
			Description: "greets someone",
			ArgsSchema:  `{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}`,
			Handler: func(ctx context.Context, call *sdk.Call) (any, error) {
				var args struct {
					Name string `json:"name"`
				}
				// qemu-ga's validation and texts: "Parameter 'name' is missing", ...
				if err := call.Decode(&args); err != nil {
					return nil, err
				}
				if args.Name == "" {
					return nil, sdk.Errorf("name must not be empty") // a GenericError
				}
				return map[string]string{"greeting": fmt.Sprintf("hello, %s", args.Name)}, nil
			},
		}},
	})
}
