package main

import (
	"errors"
	"fmt"
	"syscall"
	"unicode"
	"unicode/utf8"
)

// strerror renders err as glibc's strerror does, so error texts read like
// qemu-ga's error_setg_errno ("failed to read file: Is a directory"). Go's
// errno texts are glibc's with a lower-case first letter.
func strerror(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	switch errno {
	case 41, 58:
		return fmt.Sprintf("Unknown error %d", int(errno))
	case 133: // EHWPOISON, unnamed in package syscall
		return "Memory page has hardware error"
	}
	s := errno.Error()
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}
