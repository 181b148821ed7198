package main

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/guest-agent/guest-agent/shared/dialect"
	"github.com/guest-agent/guest-agent/shared/sdk"
)

// qgaCoreCommands are qga's commands answered in the parser process
// (dialect.Options.LocalCommands): the supervisor knows the same names
// (rpcplugin.CoreCommands) and refuses them from command plugins.
func qgaCoreCommands() []dialect.LocalCommand {
	return []dialect.LocalCommand{
		// A sync is a barrier: no reply to a request before it follows its
		// reply (libvirt syncs before every command).
		{Name: "guest-sync-delimited", SuccessResponse: true, Barrier: true, Run: guestSync},
		{Name: "guest-sync", SuccessResponse: true, Barrier: true, Run: guestSync},
		{Name: "guest-ping", SuccessResponse: true, Run: guestPing},
		{Name: "guest-info", SuccessResponse: true, ListsCommands: true, Run: guestInfo},
	}
}

func failed(err error) *sdk.Outcome { return &sdk.Outcome{Err: sdk.ProtoError(err)} }

func guestPing(_ context.Context, _ dialect.Dispatcher, args json.RawMessage) *sdk.Outcome {
	var none struct{}
	if err := sdk.DecodeArgs(args, &none); err != nil {
		return failed(err)
	}
	return &sdk.Outcome{Result: json.RawMessage(`{}`)}
}

// guestSync echoes the host's id (guest-sync-delimited's 0xFF before the
// reply is the encoder's).
func guestSync(_ context.Context, _ dialect.Dispatcher, args json.RawMessage) *sdk.Outcome {
	var a struct {
		ID int64 `json:"id"`
	}
	if err := sdk.DecodeArgs(args, &a); err != nil {
		return failed(err)
	}
	return &sdk.Outcome{Result: strconv.AppendInt(nil, a.ID, 10)}
}

// guestInfo renders qemu-ga's guest-info: the version and every command of
// the channel with enabled and success-response.
func guestInfo(_ context.Context, d dialect.Dispatcher, args json.RawMessage) *sdk.Outcome {
	var none struct{}
	if err := sdk.DecodeArgs(args, &none); err != nil {
		return failed(err)
	}
	type entry struct {
		Enabled         bool   `json:"enabled"`
		Name            string `json:"name"`
		SuccessResponse bool   `json:"success-response"`
	}
	cmds := d.Commands()
	list := make([]entry, len(cmds))
	for i, c := range cmds {
		list[i] = entry{c.Enabled, c.Name, c.SuccessResponse}
	}
	b, _ := json.Marshal(struct {
		Version           string  `json:"version"`
		SupportedCommands []entry `json:"supported_commands"`
	}{d.AgentVersion(), list})
	return &sdk.Outcome{Result: b}
}
