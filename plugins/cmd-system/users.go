package main

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"runtime"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (s *system) usersCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        "guest-get-users",
		Description: "List the users logged in (utmp), each once with its earliest login time",
		ArgsSchema:  `{"type":"object","additionalProperties":false}`,
		Handler:     s.getUsers,
	}}
}

// utmpPath is glibc's _PATH_UTMP, which getutxent() reads.
const utmpPath = "/var/run/utmp"

// struct utmp of glibc on Linux. Most 64-bit ABIs keep 32-bit times in it
// for compatibility with their 32-bit siblings (__WORDSIZE_TIME64_COMPAT32,
// 384-byte records); arm64 has a native struct timeval (400 bytes).
const (
	utmpTypeOff     = 0
	utmpUserOff     = 44
	utmpUserLen     = 32
	utmpTvOff       = 340
	utmpUserProcess = 7 // USER_PROCESS
)

type utmpLayout struct {
	size     int
	tvOff    int
	tv64     bool
	tvUsecAt int
}

func utmpLayoutFor(goarch string) utmpLayout {
	if goarch == "arm64" {
		// The timeval is 8-aligned after ut_session.
		return utmpLayout{size: 400, tvOff: 344, tv64: true, tvUsecAt: 352}
	}
	return utmpLayout{size: 384, tvOff: utmpTvOff, tvUsecAt: utmpTvOff + 4}
}

type guestUser struct {
	User      string  `json:"user"`
	LoginTime float64 `json:"login-time"`
}

// getUsers reads utmp directly: the static plugin has no libc, and the
// format is stable. A missing utmp file means nobody is logged in, as
// getutxent() returning nothing does for qemu-ga.
func (s *system) getUsers(_ context.Context, call *sdk.Call) (any, error) {
	var a struct{}
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	data, err := s.readFileLimited(s.rootPath(utmpPath))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Debug("utmp not read", "error", err)
		}
		return []guestUser{}, nil
	}
	return parseUtmp(data, utmpLayoutFor(runtime.GOARCH)), nil
}

func parseUtmp(data []byte, l utmpLayout) []guestUser {
	users := []guestUser{}
	index := map[string]int{}
	for off := 0; off+l.size <= len(data); off += l.size {
		rec := data[off : off+l.size]
		if int16(binary.NativeEndian.Uint16(rec[utmpTypeOff:])) != utmpUserProcess {
			continue
		}
		name := cString(rec[utmpUserOff : utmpUserOff+utmpUserLen])
		var sec, usec int64
		if l.tv64 {
			sec = int64(binary.NativeEndian.Uint64(rec[l.tvOff:]))
			usec = int64(binary.NativeEndian.Uint64(rec[l.tvUsecAt:]))
		} else {
			sec = int64(int32(binary.NativeEndian.Uint32(rec[l.tvOff:])))
			usec = int64(int32(binary.NativeEndian.Uint32(rec[l.tvUsecAt:])))
		}
		login := float64(sec) + float64(usec)/1e6
		if i, ok := index[name]; ok {
			// One entry per user, with the earliest login.
			if login < users[i].LoginTime {
				users[i].LoginTime = login
			}
			continue
		}
		index[name] = len(users)
		users = append(users, guestUser{User: name, LoginTime: login})
	}
	return users
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
