package main

import (
	"context"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (n *nova) kmsCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        cmdKMS,
		Description: "nova: Windows KMS activation (not supported: this agent runs on Linux)",
		ArgsSchema:  `{"type":"object","properties":{"value":{}}}`,
		Handler:     n.kmsactivate,
	}}
}

// kmsactivate activates Windows against a KMS server in nova-agent for
// Windows; a Linux guest has nothing to activate.
func (n *nova) kmsactivate(_ context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	return nil, sdk.Errorf("kmsactivate is not supported: KMS activation applies to Windows guests only, and this agent runs on Linux")
}
