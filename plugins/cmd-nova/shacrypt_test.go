package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
)

// Vectors of Drepper's specification, as glibc/libxcrypt (Debian 12)
// computes them: perl -e 'print crypt("Hello world!", q{$6$saltstring})'.
var shaCryptVectors = []struct{ setting, password, want string }{
	{"$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"},
	{"$5$rounds=10000$saltstringsaltstring", "Hello world!", "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"},
	{"$5$rounds=5000$toolongsaltstring", "Hello world!", "$5$rounds=5000$toolongsaltstrin$0vuwUia3Nx9V/DqToMS8YLcfXpEXmSaC8wgguLIbus2"},
	{"$6$saltstring", "Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
	{"$6$rounds=10000$saltstringsaltstring", "Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
	{"$6$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.",
		"$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"},
	{"$6$$", "Hello world!", "$6$$.SKR9BCFmNlzTpsFbxLHKPVAMUdqxN8.85WISsmC.fRIPfZ78cePl/wQJcKzjcsDe8rRtdaVxJHS/E1LzWy3./"},
	{"$6$abc", "", "$6$abc$mJP3a6FyA8uCnzRtlnNypPwjnvpi5TP9qOrInzrfDmwxUQG38PkpCPdqfTb8JQfAngapMxeim4AZ..hSdRRzD."},
}

func TestShaCryptVectors(t *testing.T) {
	for _, v := range shaCryptVectors {
		got, err := shaCrypt([]byte(v.password), v.setting)
		if err != nil || got != v.want {
			t.Errorf("shaCrypt(%q, %q) = %q, %v\nwant %q", v.password, v.setting, got, err, v.want)
		}
		// A whole hash works as its own setting, as with crypt(3).
		if again, err := shaCrypt([]byte(v.password), v.want); err != nil || again != v.want {
			t.Errorf("re-hash with %q = %q, %v", v.want, again, err)
		}
	}
}

func TestShaCryptRoundsClamped(t *testing.T) {
	low, _ := shaCrypt([]byte("pw"), "$6$rounds=10$roundstoolow")
	min, _ := shaCrypt([]byte("pw"), "$6$rounds=1000$roundstoolow")
	if low != min || !strings.HasPrefix(low, "$6$rounds=1000$") {
		t.Fatalf("rounds=10 gave %q, want %q", low, min)
	}
	if _, err := shaCrypt([]byte("pw"), "$1$abc"); err == nil {
		t.Fatal("MD5-crypt setting accepted")
	}
	if _, err := shaCrypt([]byte("pw"), "$6$rounds=x$abc"); err == nil {
		t.Fatal("bad rounds accepted")
	}
}

// Random passwords and salts against the system's crypt(3) (through perl)
// and against openssl passwd.
func TestShaCryptAgainstSystem(t *testing.T) {
	perl, perlErr := exec.LookPath("perl")
	openssl, sslErr := exec.LookPath("openssl")
	if perlErr != nil && sslErr != nil {
		t.Skip("neither perl nor openssl installed")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 40 {
		pw := make([]byte, r.IntN(90)+1)
		for j := range pw {
			pw[j] = byte(0x21 + r.IntN(0x5e)) // printable, no spaces: safe as argv
		}
		salt := make([]byte, r.IntN(17))
		for j := range salt {
			salt[j] = cryptAlphabet[r.IntN(64)]
		}
		id := []string{"5", "6"}[i%2]
		setting := "$" + id + "$" + string(salt)
		if i%5 == 0 {
			setting = fmt.Sprintf("$%s$rounds=%d$%s", id, 1000+r.IntN(3000), salt)
		}
		got, err := shaCrypt(pw, setting)
		if err != nil {
			t.Fatal(err)
		}
		if perlErr == nil {
			out, err := exec.Command(perl, "-e", `print crypt($ARGV[0], $ARGV[1])`, "--", string(pw), setting).Output()
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != got {
				t.Errorf("crypt(%q, %q): system %q, ours %q", pw, setting, out, got)
			}
		}
		if sslErr == nil && !strings.Contains(setting, "rounds=") && len(salt) > 0 {
			cmd := exec.Command(openssl, "passwd", "-"+id, "-salt", string(salt), "-stdin")
			cmd.Stdin = bytes.NewReader(append(pw, '\n'))
			out, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			if string(bytes.TrimSpace(out)) != got {
				t.Errorf("openssl passwd -%s -salt %s: %q, ours %q", id, salt, out, got)
			}
		}
	}
}

func TestNewSalt(t *testing.T) {
	a, _ := newSalt(16)
	b, _ := newSalt(16)
	if len(a) != 16 || a == b || strings.Trim(a, cryptAlphabet) != "" {
		t.Fatalf("salts %q %q", a, b)
	}
}
