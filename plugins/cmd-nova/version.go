package main

import (
	"context"
	"strings"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

// Names of the commands, as nova's dom0 plugin sends them.
const (
	cmdVersion     = "version"
	cmdFeatures    = "features"
	cmdKeyinit     = "keyinit"
	cmdPassword    = "password"
	cmdInjectfile  = "injectfile"
	cmdFileInject  = "file_inject"
	cmdReset       = "resetnetwork"
	cmdAgentupdate = "agentupdate"
	cmdKMS         = "kmsactivate"
)

// features lists every command of the plugin, in nova-agent's comma-joined
// form; nova's dom0 plugin looks for "file_inject" and "injectfile" in it.
var features = []string{cmdVersion, cmdFeatures, cmdKeyinit, cmdPassword, cmdInjectfile,
	cmdFileInject, cmdReset, cmdAgentupdate, cmdKMS}

func (n *nova) versionCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        cmdVersion,
		Description: "nova: the agent's version",
		ArgsSchema:  `{"type":"object","properties":{"value":{}}}`,
		Handler:     n.version,
	}, {
		Name:        cmdFeatures,
		Description: "nova: the commands this agent serves, comma-separated",
		ArgsSchema:  `{"type":"object","properties":{"value":{}}}`,
		Handler:     n.features,
	}}
}

func (n *nova) version(_ context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	if n.opts.Version != "" {
		return n.opts.Version, nil
	}
	return version, nil
}

func (n *nova) features(_ context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	return strings.Join(features, ","), nil
}
