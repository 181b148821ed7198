package main

import (
	"context"
	"os"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"golang.org/x/sys/unix"
)

func (s *system) timeCommands() []sdk.Command {
	return []sdk.Command{
		{
			Name:        "guest-get-time",
			Description: "Get the guest's system time in nanoseconds since the Epoch",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getTime,
		},
		{
			Name:        "guest-set-time",
			Description: "Set the system time (then the RTC with hwclock -w), or without time set it from the RTC (hwclock -s)",
			ArgsSchema:  `{"type":"object","properties":{"time":{"type":"integer"}},"additionalProperties":false}`,
			Handler:     s.setTime,
		},
		{
			Name:        "guest-get-timezone",
			Description: "Get the guest's time zone abbreviation and its offset to UTC in seconds",
			ArgsSchema:  `{"type":"object","additionalProperties":false}`,
			Handler:     s.getTimezone,
		},
	}
}

// getTime has qemu-ga's microsecond resolution (g_get_real_time() * 1000).
func (s *system) getTime(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	return time.Now().UnixMicro() * 1000, nil
}

func (s *system) setTime(ctx context.Context, call *sdk.Call) (any, error) {
	var a struct {
		Time *int64 `json:"time"`
	}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	hwclockArg := "-s" // no time given: system clock from the RTC
	if a.Time != nil {
		ns := *a.Time
		sec, nsec := ns/1e9, ns%1e9
		// qemu-ga accepts years 1970 to 2069 of the local calendar only.
		year := time.Unix(sec, nsec).In(s.localZone()).Year()
		if year < 1970 || year >= 2070 {
			return nil, sdk.Errorf("Invalid time")
		}
		// Truncated to the microsecond as qemu-ga does (NsecToTimeval rounds).
		tv := unix.NsecToTimeval(ns - nsec%1000)
		s.log.Info("setting the system time", "time", time.Unix(sec, nsec).UTC())
		if err := s.settimeofday(&tv); err != nil {
			return nil, sdk.Errorf("Failed to set time to guest: %s", strerror(err))
		}
		hwclockArg = "-w" // and the RTC from the new system time
	}
	if err := s.runCommand(ctx, []string{s.opts.HwclockPath, hwclockArg}, nil, "set hardware clock to system time"); err != nil {
		return nil, err
	}
	return nil, nil
}

// localZone is the guest's zone as glib finds it: TZ when set, else
// /etc/localtime, else UTC. It is read at each call, so a changed zone shows
// without a restart.
func (s *system) localZone() *time.Location {
	if _, ok := os.LookupEnv("TZ"); ok && s.opts.Root == "/" {
		return time.Local
	}
	data, err := s.readFileLimited(s.rootPath("/etc/localtime"))
	if err != nil {
		return time.UTC
	}
	loc, err := time.LoadLocationFromTZData("Local", data)
	if err != nil {
		return time.UTC
	}
	return loc
}

func (s *system) getTimezone(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	name, offset := time.Now().In(s.localZone()).Zone()
	out := map[string]any{"offset": offset}
	if name != "" {
		out["zone"] = name
	}
	return out, nil
}
